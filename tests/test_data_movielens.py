"""The `ml` recipe on small files written in each official MovieLens format, checked against a
direct per-user reading of docs/protocol.md §1.5, plus strict errors on malformed files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import data_root, needs_data
from curb.data import DataFormatError, DataNotFoundError, get_dataset

AGES = (1, 18, 25, 35, 45, 50, 56)
OCCUPATIONS = ("artist", "doctor", "engineer", "student")


def make_ratings(seed: int = 0, n_users: int = 24, half: bool = False) -> list[tuple[int, int, float, int]]:
    """(user, item, rating, ts) with many equal timestamps (ties), a few users over 30 low ratings."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(8, 80))
        items = rng.choice(np.arange(1, 150), size=n, replace=False) * 3  # sparse, non-contiguous ids
        ts = 880000000 + np.sort(rng.integers(0, n // 2 + 1, size=n)) * 60  # ~2 ratings per timestamp
        stars = rng.integers(1, 6, size=n).astype(float)
        if half:
            stars = np.clip(stars - 0.5 * rng.integers(0, 2, size=n), 0.5, 5)
        rows += [(u, int(i), float(r), int(t)) for i, r, t in zip(items, stars, ts)]
    order = rng.permutation(len(rows))  # official files are not sorted by time within a user
    return [rows[k] for k in order]


def users_for(n_users: int) -> list[tuple[int, str, int, str]]:
    rng = np.random.default_rng(1)
    return [(u, "MF"[int(rng.integers(0, 2))], int(rng.integers(7, 70)), OCCUPATIONS[int(rng.integers(0, 4))])
            for u in range(1, n_users + 1)]


def write_release(folder, fmt: str, ratings, users=None):
    """Write `ratings` (and users) in one official format; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    r = lambda x: str(int(x))  # noqa: E731
    if fmt == "ml-1m":
        (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r(s)}::{t}\n" for u, i, s, t in ratings))
        if users:
            code = lambda a: max(c for c in AGES if c <= a)  # noqa: E731
            (folder / "users.dat").write_text("".join(f"{u}::{g}::{code(a)}::{OCCUPATIONS.index(o)}::55455\n"
                                                      for u, g, a, o in users))
    elif fmt == "ml-1m-reconstructed":
        seq = {}
        rows = []
        for k, (u, i, s, t) in enumerate(sorted(ratings, key=lambda x: (x[0], x[3], x[1]))):
            seq[u] = seq.get(u, -1) + 1
            rows.append(f"{u},{i},{r(s)},{seq[u]},{k}\n")
        with gzip.open(folder / "ratings_reconstructed.csv.gz", "wt") as f:
            f.write("user_id,movie_id,rating,seq_idx,orig_line\n" + "".join(rows))
    elif fmt == "ml-100k":
        (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r(s)}\t{t}\n" for u, i, s, t in ratings))
        if users:
            (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|55455\n" for u, g, a, o in users))
    elif fmt == "recbole":
        (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" +
                                              "".join(f"{u}\t{i}\t{r(s)}\t{t}\n" for u, i, s, t in ratings))
        if users:
            (folder / "ml-100k.user").write_text(
                "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" +
                "".join(f"{u}\t{a}\t{g}\t{o}\t55455\n" for u, g, a, o in users))
    elif fmt == "ml-25m":
        (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" +
                                            "".join(f"{u},{i},{s:.1f},{t}\n" for u, i, s, t in ratings))
    return folder


def expected(ratings):
    """docs/protocol.md §1.5 read literally, one user at a time (ties by movie id)."""
    by_user = {}
    for u, i, s, t in sorted(ratings, key=lambda x: (x[0], x[3], x[1])):
        by_user.setdefault(u, []).append((i, int(np.floor(s))))
    kept = sorted(u for u, rs in by_user.items() if sum(st <= 3 for _, st in rs) >= 3)
    seqs = {u: [i for i, st in by_user[u] if st <= 3][-30:] for u in kept}
    vocab = sorted({i for s in seqs.values() for i in s})
    tasks = {f"T{k}": {u: sorted(i for i, st in by_user[u] if st == stars) for u in kept}
             for k, stars in ((2, 4), (3, 5))}
    return kept, seqs, vocab, tasks


def check_stream(s, ratings):
    kept, seqs, vocab, tasks = expected(ratings)
    assert s.n_users == len(kept) and s.n_items == len(vocab) + 1
    for row, u in enumerate(kept):
        got = [vocab[k - 1] for k in s.sequences[row] if k != 0]
        assert got == seqs[u], u
        assert (s.sequences[row][: 30 - len(got)] == 0).all()  # left padding
    for name, want in tasks.items():
        t = s.task(name)
        labels = np.unique(np.concatenate([np.array(v, dtype=np.int64) for v in want.values()]))
        assert t.n_labels == len(labels)  # its own vocabulary: sorted movie ids of the task
        for k, row in enumerate(t.targets.users):
            got = sorted(labels[t.targets.labels[t.targets.ptr[k]:t.targets.ptr[k + 1]]])
            assert got == want[kept[row]]
        assert t.targets.n_users == sum(bool(v) for v in want.values())


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-1m-reconstructed", "ml-100k", "recbole", "ml-25m"])
def test_each_official_format_gives_the_recipe_stream(tmp_path, fmt):
    ratings = make_ratings()
    s = get_dataset("ml").build(write_release(tmp_path / fmt, fmt, ratings))
    check_stream(s, ratings)
    assert s.meta["release"] == {"ml-1m-reconstructed": "ml-1m", "recbole": "ml-100k"}.get(fmt, fmt)
    assert s.sequences.shape[1] == 30 and (s.sequences != 0).sum(1).max() == 30  # some users are truncated


def test_stream_does_not_depend_on_file_order_or_format(tmp_path):
    """Equal timestamps are ordered by movie id, so any file layout gives the identical stream."""
    ratings = make_ratings()
    prints = {get_dataset("ml").build(write_release(tmp_path / f, f, rs)).fingerprint()
              for f, rs in [("ml-1m", ratings), ("ml-100k", ratings[::-1]), ("recbole", sorted(ratings)),
                            ("ml-25m", ratings)]}
    assert len(prints) == 1


def test_ml25m_half_stars_fall_into_floor_star_tasks(tmp_path):
    ratings = make_ratings(seed=3, half=True)
    assert {0.5, 3.5, 4.5} <= {r for _, _, r, _ in ratings}
    s = get_dataset("ml").build(write_release(tmp_path / "ml-25m", "ml-25m", ratings))
    check_stream(s, ratings)  # `expected` buckets stars as floor(rating): 3.5 -> T1, 4.5 -> T2


def test_ml25m_has_no_profile_tasks(tmp_path):
    folder = write_release(tmp_path / "ml-25m", "ml-25m", make_ratings())
    with pytest.raises(DataNotFoundError, match="no user attributes.*Use dataset `ml`"):
        get_dataset("ml-profile").build(folder)


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-100k", "recbole"])
def test_profile_tasks_from_the_user_file(tmp_path, fmt):
    ratings, users = make_ratings(), users_for(24)
    s = get_dataset("ml-profile").build(write_release(tmp_path / fmt, fmt, ratings, users))
    kept = expected(ratings)[0]
    info = {u: (g, a, o) for u, g, a, o in users}
    age, gender, occ = s.task("T4"), s.task("T5"), s.task("T6")
    assert list(age.targets.users) == list(range(len(kept)))
    for row, u in enumerate(kept):
        g, a, o = info[u]
        assert gender.label_names[gender.targets.labels[row]] == g
        assert age.label_names[age.targets.labels[row]] == str(max(c for c in AGES if c <= a))
        # ML-1M stores occupation codes (0..20), ML-100K the occupation names
        assert occ.label_names[occ.targets.labels[row]] == (str(OCCUPATIONS.index(o)) if fmt == "ml-1m" else o)


def test_missing_user_file_is_named(tmp_path):
    folder = write_release(tmp_path / "ml-1m", "ml-1m", make_ratings())
    with pytest.raises(DataNotFoundError, match=r"user file .*users\.dat, which is missing"):
        get_dataset("ml-profile").build(folder)


def _write_lines(tmp_path, name, lines, header=None):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("".join(l + "\n" for l in ([header] if header else []) + lines))
    return folder


GOOD_DAT = [f"{u}::{i}::{1 + (u + i) % 3}::97830{i:04d}" for u in range(1, 4) for i in range(1, 12)]


@pytest.mark.parametrize("name,lines,header,line,problem", [
    ("ratings.dat", GOOD_DAT[:5] + ["1::1193::5"] + GOOD_DAT[5:], None, 6, "truncated line: 3 of 4 fields"),
    ("ratings.dat", GOOD_DAT[:3] + ["1::abc::5::978300760"] + GOOD_DAT[3:], None, 4, "non-numeric item 'abc'"),
    ("ratings.dat", GOOD_DAT[:2] + ["1::12.5::5::978300760"], None, 3, "non-integer item 12.5"),
    ("ratings.dat", GOOD_DAT[:7] + ["1\t1193\t5\t978300760"] + GOOD_DAT[7:], None, 8, "wrong separator"),
    ("ratings.dat", ["1,1193,5,978300760"] + GOOD_DAT, None, 1, "wrong separator: expected '::'"),
    ("ratings.dat", GOOD_DAT[:4] + [""] + GOOD_DAT[4:], None, 5, "empty line"),
    ("ratings.dat", GOOD_DAT[:4] + ["1::1193::7::978300760"], None, 5, "rating 7 outside 1..5"),
    ("ratings.dat", GOOD_DAT[:4] + ["1::1193::5::978300760::9"], None, 5, "5 fields, expected 4"),
    ("u.data", ["1\t2\t3\t4", "1\t2\t3"], None, 2, "truncated line: 3 of 4 fields"),
    ("u.data", ["1\t2\t3\t4", "x\t2\t3\t4"], None, 2, "non-numeric user 'x'"),
    ("ml-100k.inter", ["1\t2\t3\t4", "1;2;3;4"], "user_id:token\titem_id:token\trating:float\ttimestamp:float", 3,
     "wrong separator"),
    ("ml-100k.inter", ["1\t2\t3\t4"], "user\titem\trating\ttimestamp", 1, "expected the header"),
    ("ratings.csv", ["1,2,3.5,4", "1,2,3.7,4"], "userId,movieId,rating,timestamp", 3, "outside 0.5..5 in half stars"),
    ("ratings.csv", ["1,2,3.5,4", "1,2"], "userId,movieId,rating,timestamp", 3, "truncated line: 2 of 4 fields"),
    # Integers must be written as plain integers: floats used to merge 1e20 and 1e20+1 into one user.
    ("ratings.dat", GOOD_DAT[:3] + ["1e20::1193::5::978300760"], None, 4, "user '1e20' is not a plain non-negative"),
    ("u.data", ["1\t2\t3\t4", "1\t1e3\t3\t4"], None, 2, "item '1e3' is not a plain non-negative integer"),
    ("u.data", ["1\t2\t3\t4", "1\t+5\t3\t4"], None, 2, "item '+5' is not"),
    ("u.data", ["1\t2\t3\t4", "1\t007\t3\t4"], None, 2, "item '007' is not"),
    ("u.data", ["1\t2\t3\t4", "1\t3\t3\tinf"], None, 2, "ts 'inf' is not"),
    ("u.data", ["1\t2\t3\t4", "1\t3\t3\t-4"], None, 2, "ts '-4' is not"),
    ("u.data", ["1\t2\t3\t4", "1\t3\t4.5\t4"], None, 2, "rating 4.5 outside 1..5"),
    ("u.data", ["1\t2\t3\t4", "12345678901234567890\t3\t3\t4"], None, 2, "user '12345678901234567890' is not"),
    # One rating per user and movie: a duplicated (or concatenated) file used to add users.
    ("u.data", ["1\t2\t3\t4", "1\t3\t3\t4", "1\t2\t3\t4"], None, 3, "user 1 rated movie 2 again (first on line 1)"),
    ("ml-100k.inter", ["1\t2\t3\t4", "1\t2\t5\t9"], "user_id:token\titem_id:token\trating:float\ttimestamp:float", 3,
     "user 1 rated movie 2 again (first on line 2)"),
])
def test_malformed_ratings_name_file_line_and_problem(tmp_path, name, lines, header, line, problem):
    folder = _write_lines(tmp_path, name, lines, header)
    with pytest.raises(DataFormatError) as e:
        get_dataset("ml").build(folder)
    assert e.value.path == str(folder / name) and e.value.line == line and problem in e.value.problem, str(e.value)


def test_empty_ratings_file(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "u.data").write_text("")
    with pytest.raises(DataFormatError, match=r"u\.data:1: file is empty"):
        get_dataset("ml").build(folder)


@pytest.mark.parametrize("name,line,problem", [
    ("users.dat", "2::X::25::4::55455", "gender 'X' is not M or F"),
    ("users.dat", "2::F::25", "truncated line: 3 of 5 fields"),
    ("users.dat", "2::F::old::4::55455", "non-numeric age 'old'"),
    # Codes outside the documented sets used to be bucketed into edge groups or become new classes.
    ("users.dat", "2::F::999::4::55455", "age '999' is not an ML-1M age code (1, 18, 25, 35, 45, 50, 56)"),
    ("users.dat", "2::F::-3::4::55455", "age '-3' is not an ML-1M age code"),
    ("users.dat", "2::F::20::4::55455", "age '20' is not an ML-1M age code"),
    ("users.dat", "2::F::25::99::55455", "occupation '99' is not an ML-1M occupation code 0..20"),
    ("users.dat", "1::F::25::4::55455", "user 1 listed twice"),
    ("u.user", "2|999|F|artist|55455", "age '999' is not an age in years, 1..120"),
    ("u.user", "2|0|F|artist|55455", "age '0' is not an age in years"),
    ("u.user", "2|30|F|astronaut|55455", "occupation 'astronaut' is not one of the ML-100K occupations"),
])
def test_malformed_user_file(tmp_path, name, line, problem):
    ratings = make_ratings(n_users=2)
    folder = write_release(tmp_path / "m", "ml-1m" if name == "users.dat" else "ml-100k", ratings)
    first = "1::F::1::10::48067" if name == "users.dat" else "1|24|M|technician|85711"
    (folder / name).write_text(first + "\n" + line + "\n")
    with pytest.raises(DataFormatError) as e:
        get_dataset("ml-profile").build(folder)
    assert e.value.path.endswith(name) and e.value.line == 2 and problem in e.value.problem, str(e.value)


def test_a_rating_user_missing_from_the_user_file_is_an_error(tmp_path):
    """Users without attributes used to drop silently out of T4-T6 while staying in T1-T3."""
    ratings = make_ratings(n_users=24)
    folder = write_release(tmp_path / "m", "ml-1m", ratings, users_for(24))
    lines = (folder / "users.dat").read_text().splitlines()
    (folder / "users.dat").write_text("\n".join(l for l in lines if not l.startswith("7::")) + "\n")
    with pytest.raises(DataFormatError, match="user 7 has no line in the user file users.dat") as e:
        get_dataset("ml-profile").build(folder)
    first = 1 + next(k for k, r in enumerate(ratings) if r[0] == 7)
    assert e.value.path.endswith("ratings.dat") and e.value.line == first
    get_dataset("ml").build(folder)  # the plain stream needs no attributes


def test_too_few_users_to_split_names_the_file(tmp_path):
    folder = write_release(tmp_path / "few", "ml-100k", make_ratings(n_users=6))
    with pytest.raises(DataFormatError, match=r"u\.data: task 'T1' has too few users"):
        get_dataset("ml").build(folder)


def test_release_found_through_curb_data(tmp_path, monkeypatch):
    ratings = make_ratings()
    write_release(tmp_path / "root" / "ml-100k", "ml-100k", ratings)
    monkeypatch.setenv("CURB_DATA", str(tmp_path / "root"))
    s = get_dataset("ml").build(None)
    assert s.meta["release"] == "ml-100k"
    check_stream(s, ratings)


@needs_data("ml-100k")
def test_ml_100k_item_vocabulary_matches_reference_run():
    """The reference run (docs/protocol.md §9.1) has 1,436; ordering equal timestamps by file line gave 1,435."""
    s = get_dataset("ml").build(data_root() / "ml-100k")
    assert s.n_items == 1436
