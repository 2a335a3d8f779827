"""Fuzzed raw files: valid MovieLens, custom-stream and item-text files, damaged by random edits.

Every edit is either *breaking* by construction (a value in a form the format does not allow, a
duplicated line, a missing or extra field, a wrong separator, ...) or *neutral*, i.e. accepted as
documented in docs/datasets.md (CRLF line ends, a missing final line end, another line order,
`4.0` for 4 stars, leading zeros and explicit padding in custom files, spaces around item-text
fields). A file set with a breaking edit must end in one line naming a damaged file (through
`curb data info`, the CLI's one error wrapper); one with only neutral edits must build, with the
same users, items and labels per task as the undamaged files: never a traceback, never a silent
change of counts. Examples are replayed from a fixed seed (`derandomize`), so a run takes the same
time everywhere (well under a minute on one core).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from curb.cli import main
from curb.data import get_dataset
from curb.datacli import stream_stats
from curb.errors import CurbError
from test_data_movielens import make_ratings, users_for, write_release

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# Values a field of each kind may never hold (every one breaks the line it is put in).
BAD = {
    "id": ["1e3", "+5", "007", " 5", "5 ", "-3", "inf", "nan", "1.5", "", "x", "0x10", "\u0661\u0662", "9" * 19,
           "1_000"],
    "stars": ["0", "6", "4.5", "-1", "x", "", "1e0", "05", "nan"],
    "half": ["0", "5.5", "3.7", "-1", "x", "", "4.25", "inf"],
    "gender": ["X", "m", "", "MF", "0"],
    "age1m": ["999", "-3", "20", "0", "", "x", "18.0"],
    "occ1m": ["99", "21", "-1", "", "x", "05"],
    "age100k": ["999", "0", "121", "-3", "", "x", "30.5"],
    "occ100k": ["astronaut", "Student", "", "12"],
}


@dataclass(frozen=True)
class Table:
    """A delimited raw file: its name, separator, whether it has a header line, its fields' kinds."""

    name: str
    sep: str
    header: bool
    kinds: tuple[str, ...]


MOVIELENS = {  # release format -> (ratings table, user table or None)
    "ml-1m": (Table("ratings.dat", "::", False, ("id", "id", "stars", "id")),
              Table("users.dat", "::", False, ("id", "gender", "age1m", "occ1m", "zip"))),
    "ml-1m-reconstructed": (Table("ratings_reconstructed.csv.gz", ",", True, ("id", "id", "stars", "id", "id")), None),
    "ml-100k": (Table("u.data", "\t", False, ("id", "id", "stars", "id")),
                Table("u.user", "|", False, ("id", "age100k", "gender", "occ100k", "zip"))),
    "recbole": (Table("ml-100k.inter", "\t", True, ("id", "id", "stars", "id")),
                Table("ml-100k.user", "\t", True, ("id", "age100k", "gender", "occ100k", "zip"))),
    "ml-25m": (Table("ratings.csv", ",", True, ("id", "id", "half", "id")), None),
}


def read_lines(path: Path) -> list[str]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("latin-1").splitlines()


def write_lines(path: Path, lines: list[str], end: str = "\n", final: bool = True, encoding: str = "utf-8") -> None:
    raw = (end.join(lines) + (end if final else "")).encode(encoding)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def summary(stats: dict) -> dict:
    """What must not change silently: users, items, and users, labels and pairs of every task."""
    return {"users": stats["users"], "items": stats["items"],
            "tasks": [[t["task"], t["users"], t["labels"], t["pairs"]] for t in stats["tasks"]]}


def info(dataset: str, folder: Path, capsys) -> tuple[int, dict | str]:
    """`curb data info DATASET --data-dir FOLDER --json`: (exit code, summary or the error line)."""
    code = main(["data", "info", dataset, "--data-dir", str(folder), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code != 0:
        assert code == 2 and err.startswith("curb: error: ") and err.count("\n") == 1, err
        return code, err
    return code, summary(json.loads(out))


def expected_summary(dataset: str, folder: Path) -> dict:
    return summary(json.loads(json.dumps(stream_stats(get_dataset(dataset).stream(folder)), default=str)))


# ---------------------------------------------------------------------------------- edits
def breaking_edit(data: st.DataObject, table: Table, lines: list[str]) -> str:
    """Apply one edit that makes `lines` invalid for `table`; returns its name."""
    first = 1 if table.header else 0
    k = data.draw(st.integers(first, len(lines) - 1), label="line")
    fields = lines[k].split(table.sep)
    kinds = [i for i, kind in enumerate(table.kinds) if kind in BAD]
    how = data.draw(st.sampled_from(["value", "short", "long", "separator", "empty", "twice"] +
                                    (["header"] if table.header else [])), label="edit")
    if how == "value":
        i = data.draw(st.sampled_from(kinds), label="field")
        fields[i] = data.draw(st.sampled_from(BAD[table.kinds[i]]), label="value")
        lines[k] = table.sep.join(fields)
    elif how == "short":
        lines[k] = table.sep.join(fields[:-1])
    elif how == "long":
        lines[k] += table.sep + "1"
    elif how == "separator":
        lines[k] = ("\t" if table.sep != "\t" else ";").join(fields)
    elif how == "empty":
        lines.insert(k, "")
    elif how == "twice":  # the same rating (user, movie) or the same user again
        lines.insert(data.draw(st.integers(first, len(lines)), label="at"), lines[k])
    else:
        lines[0] = lines[0].replace("_", "-", 1) if "_" in lines[0] else lines[0].lower()
    return how


def neutral_edits(data: st.DataObject, table: Table, lines: list[str]) -> tuple[str, bool]:
    """Documented acceptances: another line order, `4.0` for 4 stars; returns (line end, final end)."""
    if data.draw(st.booleans(), label="shuffle"):
        body = lines[1:] if table.header else lines
        body[:] = data.draw(st.permutations(body), label="order")
        lines[1 if table.header else 0:] = body
    if "stars" in table.kinds and data.draw(st.booleans(), label="4.0"):
        i = table.kinds.index("stars")
        for k in range(1 if table.header else 0, len(lines)):
            fields = lines[k].split(table.sep)
            fields[i] += ".0"
            lines[k] = table.sep.join(fields)
    return data.draw(st.sampled_from(["\n", "\r\n"]), label="line end"), data.draw(st.booleans(), label="final end")


# ---------------------------------------------------------------------------------- MovieLens
@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each release format written once, and its undamaged statistics."""
    ratings = make_ratings(n_users=24)
    out = {}
    for fmt in MOVIELENS:
        folder = write_release(tmp_path_factory.mktemp(fmt), fmt, ratings, users_for(24))
        datasets = ("ml", "ml-profile") if MOVIELENS[fmt][1] is not None else ("ml",)
        out[fmt] = folder, {d: expected_summary(d, folder) for d in datasets}
    return out


@FUZZ
@given(st.sampled_from(sorted(MOVIELENS)), st.sampled_from(["ml", "ml-profile"]), st.data())
def test_damaged_movielens_files_end_in_one_line_naming_the_file(movielens, capsys, fmt, dataset, data):
    folder, expected = movielens[fmt]
    if dataset not in expected:
        dataset = "ml"
    tables = [t for t in MOVIELENS[fmt] if t is not None and (dataset == "ml-profile" or t is MOVIELENS[fmt][0])]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for p in folder.iterdir():
            (work / p.name).write_bytes(p.read_bytes())
        breaking = data.draw(st.booleans(), label="breaking")
        table = data.draw(st.sampled_from(tables), label="file")
        lines = read_lines(work / table.name)
        if breaking:
            how = breaking_edit(data, table, lines)
            write_lines(work / table.name, lines)
            if how == "twice" and table is MOVIELENS[fmt][1]:
                how = "user twice"
        else:
            end, final = neutral_edits(data, table, lines)
            write_lines(work / table.name, lines, end, final)
        if breaking and table.name.endswith(".gz") and data.draw(st.booleans(), label="cut gzip"):
            raw = (work / table.name).read_bytes()
            (work / table.name).write_bytes(raw[:data.draw(st.integers(1, len(raw) - 1), label="cut at")])
        code, got = info(dataset, work, capsys)
    if breaking:
        event(f"breaking: {how}")
        assert code == 2 and str(work / table.name) in got, got
    else:
        event("neutral")
        assert code == 0 and got == expected[dataset], got


# ---------------------------------------------------------------------------------- custom streams
def custom_files() -> dict[str, list[str]]:
    """A valid custom stream: 14 users (two share a sequence), T2 recommend for 12, T3 classify for all."""
    seqs = [[5, 9, 10], [5, 9, 10], *([(3 * k) % 17 + 5, (5 * k) % 13 + 5, k + 5, (7 * k) % 11 + 5]
                                     for k in range(12))]
    line = lambda s: ",".join(map(str, s))  # noqa: E731
    return {"t1.csv": [line(s) for s in seqs],
            "T2.csv": [f"{line(s)},,{100 + k % 5},{200 + k % 3}" for k, s in enumerate(seqs[:12])],
            "T3.csv": [f"{line(s)},,{k % 3}" for k, s in enumerate(seqs)]}


MANIFEST = {"name": "fuzz", "tasks": [{"name": "T1", "kind": "next_item", "file": "t1.csv"},
                                      {"name": "T2", "kind": "recommend", "file": "T2.csv"},
                                      {"name": "T3", "kind": "classify", "file": "T3.csv"}],
            "item_text": "items.csv"}
ITEMS = ["item,text", *(f"{i},Item number {i}" for i in range(5, 23))]
BAD_TOKENS = ["x", "-1", "1.5", " 3", "", "1e3", "\u0663", ";", "3\t4"]


def write_custom(folder: Path, files: dict[str, list[str]], manifest: bytes, end: str = "\n",
                 final: bool = True) -> None:
    for name, lines in files.items():
        write_lines(folder / name, lines, end, final)
    (folder / "stream.json").write_bytes(manifest)


@pytest.fixture(scope="module")
def custom_expected(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("custom")
    write_custom(folder, custom_files() | {"items.csv": ITEMS}, json.dumps(MANIFEST).encode())
    return expected_summary("custom", folder)


def break_custom(data: st.DataObject, files: dict[str, list[str]]) -> tuple[str, str, bytes]:
    """One breaking edit of a task file or the manifest: (edit, file it is in, manifest bytes)."""
    manifest = json.dumps(MANIFEST).encode()
    how = data.draw(st.sampled_from(["token", "padding inside", "no ,,", "two ,,", "empty line", "twice",
                                     "two labels", "unknown item", "overlong", "manifest"]), label="edit")
    name = {"two labels": "T3.csv", "overlong": "t1.csv"}.get(how) or data.draw(
        st.sampled_from(["T2.csv", "T3.csv"] if how in ("no ,,", "two ,,", "twice", "unknown item") else list(files)),
        label="file")
    lines = files[name]
    k = data.draw(st.integers(0, len(lines) - 1), label="line")
    seq, sep, targets = lines[k].partition(",,")
    tokens = seq.split(",")
    if how == "token":
        i = data.draw(st.integers(0, len(tokens) - 1), label="token")
        tokens[i] = data.draw(st.sampled_from(BAD_TOKENS), label="value")
        lines[k] = ",".join(tokens) + sep + targets
    elif how == "padding inside":  # 0 is left padding only
        tokens[data.draw(st.integers(1, len(tokens) - 1), label="token")] = "0"
        lines[k] = ",".join(tokens) + sep + targets
    elif how == "no ,,":
        lines[k] = seq + "," + targets
    elif how == "two ,,":
        lines[k] += ",,7"
    elif how == "empty line":
        lines.insert(k, "")
    elif how == "twice":  # a duplicated later-task line would be a phantom user
        lines.insert(data.draw(st.integers(0, len(lines)), label="at"), lines[k])
    elif how == "two labels":
        lines[k] += ",1"
    elif how == "unknown item":
        lines[k] = "4444," + lines[k]
    elif how == "overlong":
        lines[k] = ",".join(["5"] * 1100) + "," + lines[k]
    else:
        name = "stream.json"
        obj = json.loads(manifest)
        edit = data.draw(st.sampled_from(["cut", "latin-1", "unknown key", "max_len", "kind", "same names"]),
                         label="how")
        if edit == "unknown key":
            obj["colour"] = "red"
        elif edit == "max_len":
            obj["max_len"] = data.draw(st.sampled_from([0, 1, 10**9, "20", True, 1.5]), label="max_len")
        elif edit == "kind":
            obj["tasks"][2]["kind"] = "regress"
        elif edit == "same names":
            obj["tasks"][2]["name"] = "T2"
        manifest = json.dumps(obj).encode()
        if edit == "cut":
            manifest = manifest[:data.draw(st.integers(1, len(manifest) - 1), label="cut at")]
        elif edit == "latin-1":
            manifest = manifest.replace(b'"fuzz"', b'"f\xfczz"')
        how = f"manifest ({edit})"
    return how, name, manifest


def neutral_custom(data: st.DataObject, files: dict[str, list[str]]) -> tuple[str, bool]:
    """Documented acceptances: later lines in another order, explicit left padding, leading zeros."""
    for name in ("T2.csv", "T3.csv"):
        if data.draw(st.booleans(), label=f"shuffle {name}"):
            files[name] = data.draw(st.permutations(files[name]), label="order")
    t1 = files["t1.csv"]
    k = data.draw(st.integers(0, len(t1) - 1), label="line")
    if data.draw(st.booleans(), label="padding"):
        t1[k] = "0,0," + t1[k]
    if data.draw(st.booleans(), label="leading zero"):
        t1[k] = ",".join("0" + t if t != "0" else t for t in t1[k].split(","))
    return data.draw(st.sampled_from(["\n", "\r\n"]), label="line end"), data.draw(st.booleans(), label="final end")


@FUZZ
@given(st.data())
def test_damaged_custom_streams_end_in_one_line_naming_the_file(custom_expected, capsys, data):
    files = custom_files()
    breaking = data.draw(st.booleans(), label="breaking")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if breaking:
            how, name, manifest = break_custom(data, files)
            write_custom(folder, files | {"items.csv": ITEMS}, manifest)
        else:
            end, final = neutral_custom(data, files)
            write_custom(folder, files | {"items.csv": ITEMS}, json.dumps(MANIFEST).encode(), end, final)
        code, got = info("custom", folder, capsys)
    if breaking:
        event(f"breaking: {how}")
        assert code == 2 and str(folder / name) in got, (how, got)
    else:
        event("neutral")
        assert code == 0 and got == custom_expected, got


# ---------------------------------------------------------------------------------- item texts
BAD_IDS = ["-1", "x", "1e3", "\u0661\u0662", "9" * 19, "", "1.5", "+7"]
BAD_IDS_OF = {"custom": ["0"], "ml": ["07"]}  # 0 is padding in custom ids, which may have leading zeros


@FUZZ
@given(st.sampled_from(["custom", "ml"]), st.data())
def test_damaged_item_text_files_end_in_one_line_naming_the_file(movielens, fmt, data):
    """`items.csv` of a custom stream and ML-1M's `movies.dat`, through the same reader as the runner."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if fmt == "custom":
            write_custom(folder, custom_files() | {"items.csv": ITEMS}, json.dumps(MANIFEST).encode())
            name, sep, lines, first = "items.csv", ",", list(ITEMS), 1
        else:
            src = movielens["ml-1m"][0]
            (folder / "ratings.dat").write_bytes((src / "ratings.dat").read_bytes())
            name, sep, first = "movies.dat", "::", 0
            lines = [f"{i}::Film {i} (1995)::Drama" for i in range(3, 450, 3)]
            write_lines(folder / name, lines)
        want = get_dataset(fmt).texts(folder)
        breaking = data.draw(st.booleans(), label="breaking")
        k = data.draw(st.integers(first, len(lines) - 1), label="line")
        fields = lines[k].split(sep)
        if breaking:
            how = data.draw(st.sampled_from(["id", "twice", "empty text", "short"] +
                                            (["comma", "quote", "latin-1", "header"] if fmt == "custom" else [])),
                            label="edit")
            if how == "id":
                fields[0] = data.draw(st.sampled_from(BAD_IDS + BAD_IDS_OF[fmt]), label="id")
                lines[k] = sep.join(fields)
            elif how == "twice":
                lines.insert(data.draw(st.integers(first, len(lines)), label="at"), lines[k])
            elif how == "empty text":
                fields[1] = "  "
                lines[k] = sep.join(fields)
            elif how == "short":
                lines[k] = fields[0]
            elif how == "comma":
                lines[k] += ", red"
            elif how == "quote":
                lines[k] = f'{fields[0]},"{fields[1]}'
            elif how == "latin-1":
                lines[k] += " caf\xe9"
            else:
                lines[0] = "id,text"
            write_lines(folder / name, lines, encoding="latin-1" if how == "latin-1" else "utf-8")
        else:
            if fmt == "custom" and data.draw(st.booleans(), label="spaces"):
                lines[k] = f" {fields[0]} , {fields[1]} "
            write_lines(folder / name, lines, data.draw(st.sampled_from(["\n", "\r\n"]), label="line end"))
        try:
            got = get_dataset(fmt).texts(folder)
        except CurbError as e:
            assert breaking, e
            event(f"breaking: {how}")
            assert str(folder / name) in str(e) and "\n" not in str(e)
            return
    assert not breaking, how
    event("neutral")
    assert got.ids.tolist() == want.ids.tolist() and got.texts == want.texts
