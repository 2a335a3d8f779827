"""docs/datasets.md's custom-stream example, run end to end exactly as written, and the
`curb data info` tables it and the MovieLens cards quote."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from conftest import data_root, needs_data
from curb.cli import main

DOC = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()


def doc_files() -> dict[str, str]:
    return dict(re.findall(r"```(?:json|csv) (shop/\S+)\n(.*?)```", DOC, flags=re.S))


def doc_command(prefix: str) -> list[str]:
    line = next(l for l in DOC.splitlines() if l.startswith(prefix))
    return shlex.split(line)[1:]  # drop the program name `curb`


def table_rows(block: str) -> list[str]:
    return [l.strip() for l in block.splitlines() if l.strip().startswith("| ") and "---" not in l]


def test_custom_example_runs_as_documented(tmp_path, monkeypatch, capsys):
    files = doc_files()
    assert set(files) == {"shop/stream.json", "shop/clicks.csv", "shop/buys.csv", "shop/tier.csv"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(doc_command("curb data info custom")) == 0
    out = capsys.readouterr().out
    shown = re.search(r"`curb data info` prints:\n\n```text\n(.*?)```", DOC, flags=re.S).group(1)
    assert out.startswith(shown.splitlines()[0])
    assert table_rows(shown) and all(row in out for row in table_rows(shown))
    assert main([*doc_command("curb run --dataset custom"), "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| pop +\| default +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ ", out)
    assert re.search(r"\| sinmo +\| default +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ ", out)


def _card_rows(title: str) -> list[list[str]]:
    block = DOC.split(title, 1)[1].split("Sequence length", 1)[0]
    return [[c.strip() for c in r.strip("|").split("|")] for r in table_rows(block)[1:]]


def _info_rows(release: str, capsys) -> list[list[str]]:
    assert main(["data", "info", "ml-profile", "--data-dir", str(data_root() / release)]) == 0
    out = capsys.readouterr().out
    return [[c.strip() for c in r.strip("|").split("|")] for r in table_rows(out)[1:]]


@needs_data("ml-1m")
def test_ml_1m_card_matches_data_info(capsys):
    doc = _card_rows("ML-1M (`curb data info ml-profile")
    got = _info_rows("ml-1m", capsys)
    assert [[r[0], *r[3:]] for r in doc] == [[r[0], *r[3:]] for r in got]


@needs_data("ml-100k")
def test_ml_100k_card_matches_data_info(capsys):
    doc = _card_rows("ML-100K (`curb data info ml-profile")
    got = _info_rows("ml-100k", capsys)
    assert [[r[0], *r[3:]] for r in doc] == [[r[0], *r[3:]] for r in got]


@needs_data("ml-100k")
def test_ml_time_card_matches_data_info(capsys):
    block = DOC.split("`curb data info ml-time", 1)[1].split("ML-100K's users", 1)[0]
    doc = [[c.strip() for c in r.strip("|").split("|")] for r in table_rows(block)[1:]]
    assert main(["data", "info", "ml-time", "--data-dir", str(data_root() / "ml-100k")]) == 0
    got = [[c.strip() for c in r.strip("|").split("|")] for r in table_rows(capsys.readouterr().out)[1:]]
    assert len(doc) == 3 and [[r[0], *r[3:]] for r in doc] == [[r[0], *r[3:]] for r in got]
