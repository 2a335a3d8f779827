"""Custom streams (manifest + `sequence,,targets` files) and the TTL loader on files written in
the reference format: indexing conventions, user matching across tasks, strict errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curb.cli import main
from curb.data import DataFormatError, DataNotFoundError, get_dataset
from curb.datasets.ttl import FILES as TTL_FILES


def write_stream(folder, t1: list[str], later: dict[str, tuple[str, list[str]]], **options):
    """Write a custom stream: T1 lines, and {task: (kind, lines)} for the later tasks."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t1.csv").write_text("".join(l + "\n" for l in t1))
    tasks = [{"name": "T1", "kind": "next_item", "file": "t1.csv"}]
    for name, (kind, lines) in later.items():
        (folder / f"{name}.csv").write_text("".join(l + "\n" for l in lines))
        tasks.append({"name": name, "kind": kind, "file": f"{name}.csv"})
    (folder / "stream.json").write_text(json.dumps({"tasks": tasks, **options}))
    return folder


def seqs(n: int = 14, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 7))
        out.append([int(x) for x in rng.choice([5, 9, 10, 100, 1000, 42, 7], size=k)])
    return out


def line(s: list[int], width: int | None = None) -> str:
    return ",".join(map(str, [0] * ((width or len(s)) - len(s)) + s))


def build(folder):
    return get_dataset("custom").build(folder)


def test_reference_indexing_and_per_task_target_dictionaries(tmp_path):
    s1 = seqs()
    t2 = [line(s) + ",,300,20" for s in s1[:12]]
    t3 = [line(s) + f",,{k % 3 * 5}" for k, s in enumerate(s1)]
    st = build(write_stream(tmp_path / "s", [line(s, 6) for s in s1],
                            {"T2": ("recommend", t2), "T3": ("classify", t3)}))
    vocab = sorted({x for s in s1 for x in s})  # numeric order: 5 < 7 < 9 < 10 < 42 < 100 < 1000
    assert st.n_items == len(vocab) + 1
    for row, s in enumerate(s1):
        assert [vocab[i - 1] for i in st.sequences[row] if i] == s
    assert st.task("T1").targets.labels.tolist() == [vocab.index(s[-1]) + 1 for s in s1]
    t2 = st.task("T2")
    assert t2.n_labels == 2 and t2.targets.users.tolist() == list(range(12))  # matched to the T1 users
    assert t2.targets.labels.tolist() == [1, 0] * 12  # 300 -> 1, 20 -> 0: sorted numerically, own dictionary
    t3 = st.task("T3")
    assert t3.label_names == ("0", "5", "10") and t3.targets.labels.tolist() == [k % 3 for k in range(14)]
    assert st.meta["users_outside_T1"] == {"T2": 0, "T3": 0}


def test_identical_sequences_match_kth_to_kth_and_a_line_beyond_them_is_refused(tmp_path):
    dup = [5, 9, 10]
    s1 = [dup, dup] + seqs(12, seed=1)
    t3 = [line(dup) + ",,1", line(dup) + ",,2"] + [line(s) + ",,0" for s in s1[2:]]
    st = build(write_stream(tmp_path / "s", [line(s) for s in s1], {"T3": ("classify", t3)}))
    # the two `dup` lines go to the two `dup` users, in order
    assert st.n_users == len(s1) and st.meta["users_outside_T1"] == {"T3": 0}
    assert st.task("T3").targets.users[:2].tolist() == [0, 1]
    assert [st.task("T3").label_names[i] for i in st.task("T3").targets.labels[:2]] == ["1", "2"]
    # A third `dup` line would be a phantom user with a T1 user's sequence (a duplicated line): refused.
    t3_dup = t3[:2] + [line(dup) + ",,3"] + t3[2:]
    folder = write_stream(tmp_path / "d", [line(s) for s in s1], {"T3": ("classify", t3_dup)})
    with pytest.raises(DataFormatError, match="already matched.*a duplicated line") as e:
        build(folder)
    assert e.value.path.endswith("T3.csv") and e.value.line == 3


def test_a_repeated_line_of_a_user_outside_t1_is_refused(tmp_path):
    s1 = seqs()
    a, b = line([5] * 7), line([7] * 7)  # 7 items: longer than any T1 sequence, so no T1 user's
    later = [line(s) + ",,1" for s in s1] + [a + ",,1", b + ",,1", a + ",,2", a + ",,1"]
    st = build(write_stream(tmp_path / "ok", [line(s) for s in s1], {"T2": ("recommend", later[:-1])}))
    assert st.meta["users_outside_T1"] == {"T2": 3}  # same sequence, other targets: two users outside T1
    with pytest.raises(DataFormatError, match=r"repeats line %d \(same sequence, same targets" % (len(s1) + 1)) as e:
        build(write_stream(tmp_path / "dup", [line(s) for s in s1], {"T2": ("recommend", later)}))
    assert e.value.line == len(s1) + 4


def test_unseen_items_are_rejected_or_padded(tmp_path):
    s1 = seqs()
    later = [line(s) + ",,1" for s in s1[:-1]] + ["5,77,9,,1"]
    folder = write_stream(tmp_path / "e", [line(s) for s in s1], {"T2": ("recommend", later)})
    with pytest.raises(DataFormatError) as e:
        build(folder)
    assert e.value.path.endswith("T2.csv") and e.value.line == 14 and "unknown item 77" in e.value.problem
    st = build(write_stream(tmp_path / "p", [line(s) for s in s1], {"T2": ("recommend", later)}, unseen="pad"))
    vocab = sorted({x for s in s1 for x in s})
    new = st.sequences[st.task("T2").targets.users[-1]]
    assert new[-3:].tolist() == [vocab.index(5) + 1, 0, vocab.index(9) + 1]
    assert st.meta["unseen_items_padded"] == {"T2": 1}


def test_variable_lengths_are_left_padded_and_max_len_keeps_the_last_items(tmp_path):
    s1 = seqs()
    st = build(write_stream(tmp_path / "v", [line(s) for s in s1], {}))
    assert st.sequences.shape[1] == max(map(len, s1))
    st = build(write_stream(tmp_path / "m", [line(s) for s in s1], {}, max_len=3))
    vocab = sorted({x for s in s1 for x in s})
    assert [[vocab[i - 1] for i in r if i] for r in st.sequences] == [s[-3:] for s in s1]


def test_padded_files_must_have_one_length(tmp_path):
    s1 = seqs()
    t1 = [line(s, 6) for s in s1]
    t1[4] = line(s1[4], 5)
    with pytest.raises(DataFormatError, match=r"t1\.csv:5: truncated or overlong line: 5 input tokens, expected 6"):
        build(write_stream(tmp_path / "p", t1, {}, padded=True))


GOOD = [line(s) for s in seqs()]


@pytest.mark.parametrize("first,later_line,where,problem", [
    (GOOD[:3] + ["1,2,x"] + GOOD[3:], None, ("t1.csv", 4), "bad token 'x'"),
    (GOOD[:3] + ["1,2.5,3"] + GOOD[3:], None, ("t1.csv", 4), "bad token '2.5'"),
    (GOOD[:3] + ["1,-2,3"] + GOOD[3:], None, ("t1.csv", 4), "bad token '-2'"),
    (GOOD[:5] + ["1;2;3"] + GOOD[5:], None, ("t1.csv", 6), "wrong separator ';'"),
    (GOOD[:5] + ["1\t2\t3"] + GOOD[5:], None, ("t1.csv", 6), "wrong separator '\\t'"),
    (GOOD[:2] + [""] + GOOD[2:], None, ("t1.csv", 3), "empty line"),
    (GOOD[:2] + ["0,0,0"] + GOOD[2:], None, ("t1.csv", 3), "empty sequence"),
    (GOOD[:2] + ["5,0,9"] + GOOD[2:], None, ("t1.csv", 3), "padding 0 inside a sequence"),
    (GOOD[:2] + ["5,9,"] + GOOD[2:], None, ("t1.csv", 3), "bad token ''"),
    (GOOD[:2] + ["5," + "9" * 25] + GOOD[2:], None, ("t1.csv", 3), "id too large"),
    (GOOD, "5,9,10", ("T2.csv", 14), "no ',,' between the input sequence and the targets"),
    (GOOD, "5,9,10,,", ("T2.csv", 14), "no targets after ',,'"),
    (GOOD, ",,3", ("T2.csv", 14), "no input sequence before ',,'"),
    (GOOD, "5,9,,1,,2", ("T2.csv", 14), "more than one ',,'"),
    (GOOD, "5,9,,1,b", ("T2.csv", 14), "bad token 'b'"),
])
def test_malformed_task_files_name_file_line_and_problem(tmp_path, first, later_line, where, problem):
    later = GOOD[:13] + [later_line if later_line is not None else GOOD[13]]
    folder = write_stream(tmp_path / "b", first, {"T2": ("recommend", [l + ",,1" for l in later[:13]] + (
        [later[13]] if later_line is not None else [later[13] + ",,1"]))})
    with pytest.raises(DataFormatError) as e:
        build(folder)
    assert (e.value.path, e.value.line) == (str(folder / where[0]), where[1]), str(e.value)
    assert problem in e.value.problem, str(e.value)


def test_empty_file_classify_arity_and_too_few_users(tmp_path):
    with pytest.raises(DataFormatError, match=r"T2\.csv: file is empty"):
        build(write_stream(tmp_path / "a", GOOD, {"T2": ("recommend", [])}))
    with pytest.raises(DataFormatError, match=r"T3\.csv:2: task T3 is a classify task: each line needs exactly one"):
        build(write_stream(tmp_path / "b", GOOD, {"T3": ("classify", [GOOD[0] + ",,1", GOOD[1] + ",,1,2"])}))
    with pytest.raises(DataFormatError, match=r"T2\.csv: task 'T2' has too few users \(5\)"):
        build(write_stream(tmp_path / "c", GOOD, {"T2": ("recommend", [l + ",,1" for l in GOOD[:5]])}))


@pytest.mark.parametrize("manifest,problem", [
    ({"tasks": [{"name": "T1", "kind": "next_item", "file": "t1.csv"}], "seq": 3}, "unknown manifest keys ['seq']"),
    ({"tasks": []}, "'tasks' must be a non-empty list"),
    ({"tasks": [{"name": "T1", "kind": "recommend", "file": "t1.csv"}]}, "the first task, and only the first"),
    ({"tasks": [{"name": "T1", "kind": "next_item", "file": "t1.csv"}, {"name": "T1", "kind": "classify",
                                                                        "file": "t1.csv"}]}, "duplicate task names"),
    ({"tasks": [{"name": "T1", "kind": "guess", "file": "t1.csv"}]}, "kind 'guess' is not one of"),
    ({"tasks": [{"name": "T1", "kind": "next_item", "file": "../t1.csv"}]}, "relative to the manifest"),
    ({"tasks": [{"name": "T1", "kind": "next_item", "file": "t1.csv"}], "unseen": "drop"}, "one of ['error', 'pad']"),
])
def test_manifest_errors(tmp_path, manifest, problem):
    folder = write_stream(tmp_path / "m", GOOD, {})
    (folder / "stream.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError) as e:
        build(folder)
    assert e.value.path == str(folder / "stream.json") and problem in e.value.problem


def test_missing_manifest_and_missing_task_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="pass --data-dir"):
        get_dataset("custom").build(None)
    with pytest.raises(DataNotFoundError, match="no manifest .*stream.json"):
        build(tmp_path)
    folder = write_stream(tmp_path / "f", GOOD, {"T2": ("recommend", [l + ",,1" for l in GOOD])})
    (folder / "T2.csv").unlink()
    with pytest.raises(DataNotFoundError, match=r"task files missing: .*T2\.csv"):
        build(folder)


# ----------------------------------------------------------------------------------- TTL
def write_ttl(folder, n: int = 16, width: int = 100, seed: int = 0):
    """Six files as in the CONURE bundle: fixed-length left-padded T1, `seq,,targets` later files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(n):
        k = int(rng.integers(1, width + 1))
        rows.append(",".join(map(str, [0] * (width - k) + list(rng.integers(1, 5000, size=k) * 7))))
    targets = {"T2": lambda: ",".join(map(str, rng.integers(0, 900, size=int(rng.integers(1, 4))))),
               "T3": lambda: str(int(rng.integers(0, 300))), "T4": lambda: str(int(rng.integers(1, 9))),
               "T5": lambda: str(int(rng.integers(1, 3))), "T6": lambda: str(int(rng.integers(1, 7)))}
    for name, kind, fname, _ in TTL_FILES:
        if name == "T1":
            body = rows
        else:
            users = range(1, n) if name == "T3" else range(n)  # not every user thumbed something up
            body = [rows[u] + ",," + targets[name]() for u in users]
        (folder / fname).write_text("\n".join(body) + "\n")
    return folder, rows


def test_ttl_six_tasks_with_reference_indexing(tmp_path):
    folder, rows = write_ttl(tmp_path / "ttl")
    st = get_dataset("ttl").build(folder)
    assert [(t.name, t.kind) for t in st.tasks] == [("T1", "next_item"), ("T2", "recommend"), ("T3", "recommend"),
                                                    ("T4", "classify"), ("T5", "classify"), ("T6", "classify")]
    tokens = sorted({int(x) for r in rows for x in r.split(",")})
    assert tokens[0] == 0 and st.n_items == len(tokens)  # |V| counts the padding id, no UNK slot
    assert st.sequences.shape == (16, 100)
    raw = np.array([[int(x) for x in r.split(",")] for r in rows])
    assert (np.array(tokens)[st.sequences] == raw).all()  # id = rank of the token in numeric order
    for t, (_, _, fname, _) in zip(st.tasks[1:], TTL_FILES[1:]):
        labels = sorted({int(y) for l in (folder / fname).read_text().split() for y in l.split(",,")[1].split(",")})
        assert t.n_labels == len(labels)  # own dictionary, no padding slot
        assert t.targets.users.max() < 16  # every line matched a T1 user
    assert st.meta["options"] == {"unseen": "error", "padded": True, "max_len": None}


def test_ttl_unseen_item_and_options_file(tmp_path):
    folder, rows = write_ttl(tmp_path / "ttl")
    click = folder / TTL_FILES[1][2]
    lines = click.read_text().splitlines()
    lines[3] = ",".join(["0"] * 99 + ["13"]) + ",,5"  # 13 is not a multiple of 7: never in T1
    click.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"original_desen_finetune_click_nouserID\.csv:4: unknown item 13"):
        get_dataset("ttl").build(folder)
    (folder / "stream.json").write_text('{"unseen": "pad"}')
    st = get_dataset("ttl").build(folder)
    assert st.meta["unseen_items_padded"]["T2"] == 1 and st.meta["users_outside_T1"]["T2"] == 1
    (folder / "stream.json").write_text('{"tasks": []}')
    with pytest.raises(DataFormatError, match="may only set"):
        get_dataset("ttl").build(folder)


def test_ttl_truncated_line_and_missing_file(tmp_path):
    folder, rows = write_ttl(tmp_path / "ttl")
    t1 = folder / TTL_FILES[0][2]
    lines = t1.read_text().splitlines()
    lines[7] = lines[7][: lines[7].rindex(",")]  # a line cut short by one token
    t1.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"pretrain\.csv:8: truncated or overlong line: 99 input tokens, "
                                              "expected 100"):
        get_dataset("ttl").build(folder)
    (folder / TTL_FILES[5][2]).unlink()
    with pytest.raises(DataNotFoundError, match="TTL files not found. curb looked in"):
        get_dataset("ttl").build(folder)


def test_data_info_json_reports_the_stream(tmp_path, capsys):
    s1 = seqs()
    folder = write_stream(tmp_path / "j", [line(s) for s in s1], {"T2": ("recommend", [line(s) + ",,4,8,15"
                                                                                      for s in s1[:11]])})
    assert main(["data", "info", "custom", "--data-dir", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    lengths = sorted(map(len, s1))
    assert info["users"] == 14 and info["seq_len"] == max(lengths)
    assert [(t["task"], t["users"], t["labels"], t["pairs"], t["mean_targets"]) for t in info["tasks"]] == \
        [("T1", 14, len({x for s in s1 for x in s}) + 1, 14, 1.0), ("T2", 11, 3, 33, 3.0)]
    assert (info["length"]["min"], info["length"]["max"]) == (lengths[0], lengths[-1])
    assert info["length"]["median"] == float(np.median(lengths))


def test_windows_line_endings_and_missing_final_newline_are_accepted(tmp_path):
    a = write_stream(tmp_path / "a", GOOD, {"T2": ("recommend", [l + ",,1" for l in GOOD])})
    b = tmp_path / "b"
    b.mkdir()
    for f in a.iterdir():
        text = f.read_bytes()
        (b / f.name).write_bytes(text.replace(b"\n", b"\r\n").rstrip() if f.suffix == ".csv" else text)
    assert build(a).fingerprint() == build(b).fingerprint()


def test_row_matching_survives_hash_collisions(tmp_path, monkeypatch):
    """Every hash match is compared in full; with all hashes colliding the result is unchanged."""
    import curb.datasets.custom as custom

    dup = [5, 9, 10]
    s1 = [dup, dup] + seqs(12, seed=1)
    t3 = [line(dup) + ",,1", line(dup) + ",,2", line([5] * 7) + ",,3"] + [line(s) + ",,0" for s in s1[2:]][::-1]
    want = build(write_stream(tmp_path / "a", [line(s) for s in s1], {"T3": ("classify", t3)}))
    real = custom._row_keys
    monkeypatch.setattr(custom, "_row_keys", lambda a, exact: real(a, True) if exact else np.zeros(len(a), np.uint64))
    got = build(write_stream(tmp_path / "b", [line(s) for s in s1], {"T3": ("classify", t3)}, name="b"))
    assert got.fingerprint() == want.fingerprint()


def test_an_overlong_line_is_refused_naming_file_line_and_length(tmp_path, capsys):
    """One 300,000-item line used to pad every user to its width (22 GB, killed by the kernel)."""
    from curb.datasets.custom import MAX_LEN

    s1 = seqs()
    t1 = [line(s) for s in s1[:5]] + [",".join(["5"] * 300_000)] + [line(s) for s in s1[5:]]
    folder = write_stream(tmp_path / "long", t1, {})
    with pytest.raises(DataFormatError, match=rf"300,000 input tokens, more than the {MAX_LEN:,}.*set \"max_len\"") as e:
        build(folder)
    assert e.value.path.endswith("t1.csv") and e.value.line == 6
    # With max_len the line keeps its last items, like every other line.
    st = build(write_stream(tmp_path / "cut", t1, {}, max_len=MAX_LEN))
    assert st.sequences.shape == (len(t1), MAX_LEN)
    # max_len itself is bounded: 10**9 used to be a MemoryError traceback.
    folder = write_stream(tmp_path / "huge", [line(s) for s in s1], {}, max_len=10**9)
    assert main(["data", "info", "custom", "--data-dir", str(folder)]) == 2
    assert f"manifest key 'max_len' must be an integer 2..{MAX_LEN} or null, got 1000000000" in capsys.readouterr().err


def test_item_ids_of_item_texts_are_plain_integers(tmp_path):
    from curb.datasets.custom import read_item_texts

    for body, problem in (("item,text\n\u0661\u0662,Shoes\n", "must be a positive integer"),  # Arabic-Indic digits
                          ("item,text\n" + "9" * 30 + ",Shoes\n", "must be a positive integer of at most 18 digits"),
                          ("item,text\n1e3,Shoes\n", "must be a positive integer")):
        (tmp_path / "items.csv").write_text(body)
        with pytest.raises(DataFormatError, match=problem) as e:
            read_item_texts(tmp_path / "items.csv")
        assert e.value.line == 2
