"""The built-stream cache: a second build does not parse, and any change to the source files or
to the recipe version rebuilds; a damaged or unwritable cache never breaks a build."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import curb.data as data
import curb.datasets.custom as custom
from curb.data import get_dataset, load_stream, save_stream, stream_cache_dir
from test_data_custom import GOOD, write_stream


@pytest.fixture
def parses(monkeypatch):
    """Counts calls of the custom recipe's parser."""
    calls = []
    real = custom.build

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(custom, "build", counting)
    return calls


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a cache of its own per test
    return write_stream(tmp_path / "s", GOOD, {"T2": ("recommend", [l + ",,7,3" for l in GOOD]),
                                               "T3": ("classify", [l + f",,{k % 2}" for k, l in enumerate(GOOD)])})


def test_second_build_reads_the_cache(folder, parses):
    a = get_dataset("custom").build(folder)
    b = get_dataset("custom").build(folder)
    assert len(parses) == 1
    assert a.fingerprint() == b.fingerprint() and a.n_items == b.n_items
    assert [(t.name, t.kind, t.label_names, t.description) for t in a.tasks] == \
           [(t.name, t.kind, t.label_names, t.description) for t in b.tasks]
    assert b.meta["recipe_version"] == "1" and b.sequences.dtype == np.int64


def test_recipe_version_change_invalidates(folder, parses, monkeypatch):
    get_dataset("custom").build(folder)
    before = set(stream_cache_dir().glob("custom-*.npz"))
    monkeypatch.setitem(data._DATASETS, "custom", dataclasses.replace(data._DATASETS["custom"], version="2"))
    s = get_dataset("custom").build(folder)
    assert len(parses) == 2 and s.meta["recipe_version"] == "2"
    assert len(set(stream_cache_dir().glob("custom-*.npz")) - before) == 1
    get_dataset("custom").build(folder)
    assert len(parses) == 2


def test_source_change_invalidates(folder, parses):
    a = get_dataset("custom").build(folder)
    (folder / "T3.csv").write_text("".join(l + f",,{(k + 1) % 2}\n" for k, l in enumerate(GOOD)))
    b = get_dataset("custom").build(folder)
    assert len(parses) == 2 and a.fingerprint() != b.fingerprint()


def test_damaged_cache_is_rebuilt_and_unwritable_cache_still_builds(folder, parses, monkeypatch, tmp_path):
    a = get_dataset("custom").build(folder)
    for p in stream_cache_dir().glob("custom-*.npz"):
        p.write_bytes(p.read_bytes()[:100])
    b = get_dataset("custom").build(folder)
    assert len(parses) == 2 and a.fingerprint() == b.fingerprint()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # cache dir below a file: cannot be created
    assert get_dataset("custom").build(folder).fingerprint() == a.fingerprint()


def test_save_load_roundtrip_keeps_everything(tiny_stream, tmp_path):
    save_stream(tiny_stream, tmp_path / "s.npz")
    back = load_stream(tmp_path / "s.npz")
    assert back.fingerprint() == tiny_stream.fingerprint() and back.name == tiny_stream.name
    assert [(t.label_names, t.description) for t in back.tasks] == \
           [(t.label_names, t.description) for t in tiny_stream.tasks]
    assert back.meta == tiny_stream.meta
