"""`ml` / `ml-profile`: the paper's MovieLens stream built from real ratings (docs/protocol.md §1.5).

Recipe (per user, ratings in chronological order; equal timestamps ordered by movie id):
  T1 next-item: the last 30 movies rated below 4 stars, left-padded with 0; users with fewer
     than 3 such movies are dropped (they have no usable sequence).
  T2 recommend: every movie rated 4 stars.   T3 recommend: every movie rated 5 stars.
  Stars are floor(rating), so ML-25M's half stars fall into T1 (0.5..3.5), T2 (4, 4.5), T3 (5).
  T2/T3 read the same T1 sequence; each task has its own target vocabulary (sorted movie ids).
  `ml-profile` adds T4 age (7 groups), T5 gender, T6 occupation (21) from the user file.

Files understood (release detected from what is present in the data directory):
  ML-1M   official `ratings.dat` (+ `users.dat`), or `ratings_reconstructed.csv.gz`
          (user_id,movie_id,rating,seq_idx,orig_line; chronological `seq_idx`)
  ML-100K official `u.data` (+ `u.user`), or RecBole atomic `ml-100k.inter` (+ `ml-100k.user`)
  ML-25M  official `ratings.csv` (no user attributes: `ml-profile` is unavailable)
Item titles (for `backbone.item_init=text`): `movies.dat` (ML-1M), `u.item` or RecBole's
`ml-100k.item` (ML-100K), `movies.csv` (ML-25M); the stream keeps each item id's movie id.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curb.data import (DataFormatError, DataNotFoundError, ItemTexts, Release, cached_build, candidate_dirs,
                       check_splittable, get_release, not_found_message, register_dataset, register_release)
from curb.streams import Targets, Task, TaskStream

if TYPE_CHECKING:
    import pandas as pd

VERSION = "1"
SEQ_LEN = 30
MIN_SEQ = 3
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M age codes; ML-100K ages are bucketed into them

_TERMS = ("GroupLens terms: research use only; no endorsement by the University of Minnesota; cite Harper & "
          "Konstan 2015 (ACM TiiS 5(4):19); no redistribution without separate permission; no commercial use.")
_BASE = "https://files.grouplens.org/datasets/movielens/"
# md5 values are GroupLens' own `<archive>.md5` files (e.g. `MD5 (ml-1m.zip) = c4d9...`).
RELEASES = tuple(register_release(r) for r in (
    Release("ml-1m", "MovieLens 1M (6,040 users, 3,706 movies, 1,000,209 ratings)",
            "https://grouplens.org/datasets/movielens/1m/", _TERMS,
            (("ratings.dat",), ("ratings_reconstructed.csv.gz",)),
            _BASE + "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", _BASE + "ml-1m.zip.md5"),
    Release("ml-100k", "MovieLens 100K (943 users, 1,682 movies, 100,000 ratings)",
            "https://grouplens.org/datasets/movielens/100k/", _TERMS,
            (("u.data",), ("ml-100k.inter",)),
            _BASE + "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", _BASE + "ml-100k.zip.md5"),
    Release("ml-25m", "MovieLens 25M (162,541 users, 62,423 movies, 25,000,095 ratings; no demographics)",
            "https://grouplens.org/datasets/movielens/25m/", _TERMS,
            (("ratings.csv",),),
            _BASE + "ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada", _BASE + "ml-25m.zip.md5"),
))


@dataclass(frozen=True)
class Layout:
    """One official file format: how to read its ratings and (if any) its user attributes."""

    release: str
    ratings: str
    users: str | None
    sep: str  # field separator as written in the file
    columns: tuple[str, ...]  # every field of a ratings line, in order
    header: tuple[str, ...] | None = None  # exact header line fields, when the file has one
    half_stars: bool = False
    items: str = ""  # the file holding the movie titles
    timestamps: bool = True  # `ts` is a rating time (False: only each user's order, as in the rebuilt ML-1M)


_LAYOUTS = (
    Layout("ml-1m", "ratings.dat", "users.dat", "::", ("user", "item", "rating", "ts"), items="movies.dat"),
    Layout("ml-1m", "ratings_reconstructed.csv.gz", "users.dat", ",", ("user", "item", "rating", "ts", "orig"),
           ("user_id", "movie_id", "rating", "seq_idx", "orig_line"), items="movies.dat", timestamps=False),
    Layout("ml-100k", "u.data", "u.user", "\t", ("user", "item", "rating", "ts"), items="u.item"),
    Layout("ml-100k", "ml-100k.inter", "ml-100k.user", "\t", ("user", "item", "rating", "ts"),
           ("user_id:token", "item_id:token", "rating:float", "timestamp:float"), items="ml-100k.item"),
    Layout("ml-25m", "ratings.csv", None, ",", ("user", "item", "rating", "ts"),
           ("userId", "movieId", "rating", "timestamp"), half_stars=True, items="movies.csv"),
)


# ------------------------------------------------------------------------------- strict reading
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="latin-1") if path.suffix == ".gz" else open(path, encoding="latin-1")


def _raw_line(path: Path, lineno: int) -> str:
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            if i == lineno:
                return line.rstrip("\r\n")
    return ""


_OTHER_SEPS = ("::", "\t", ",", "|", ";", " ")


def diagnose(path: Path, lineno: int, sep: str, names: tuple[str, ...], numeric: tuple[str, ...]) -> DataFormatError:
    """The precise problem of one line: empty, wrong separator, truncated, extra or non-numeric field."""
    line = _raw_line(path, lineno)
    if not line.strip():
        return DataFormatError(path, lineno, "empty line")
    fields = line.split(sep)
    if len(fields) == 1:
        found = [s for s in _OTHER_SEPS if s != sep and s in line]
        if found:
            return DataFormatError(path, lineno, f"wrong separator: expected {sep!r} between fields, found "
                                                 f"{found[0]!r} in {line[:80]!r}")
    if len(fields) < len(names):
        return DataFormatError(path, lineno, f"truncated line: {len(fields)} of {len(names)} fields "
                                             f"({sep.join(names)}) in {line[:80]!r}")
    if len(fields) > len(names):
        return DataFormatError(path, lineno, f"{len(fields)} fields, expected {len(names)} ({sep.join(names)}) "
                                             f"in {line[:80]!r}")
    for name, value in zip(names, fields):
        if name in numeric and not _is_number(value):
            return DataFormatError(path, lineno, f"non-numeric {name} {value!r}")
    return DataFormatError(path, lineno, f"malformed line {line[:80]!r}")


def read_table(path: Path, sep: str, names: tuple[str, ...], header: tuple[str, ...] | None,
               numeric: tuple[str, ...], integer: tuple[str, ...]) -> pd.DataFrame:
    """Read a delimited file strictly: every error names the file, the line and the problem.

    The fast path parses numbers in C; only when it fails is the offending line located and
    explained (`diagnose`), so clean files cost one `read_csv`.
    """
    import pandas as pd  # here, not at module level: listing datasets must not load pandas

    with _open_text(path) as f:
        first = f.readline().rstrip("\r\n")
    if not first.strip():
        raise DataFormatError(path, 1, "file is empty" if path.stat().st_size == 0 else "empty line")
    if sep not in first:
        raise diagnose(path, 1, sep, names, numeric)
    if header is not None and tuple(first.split(sep)) != header:
        raise DataFormatError(path, 1, f"expected the header {sep.join(header)!r}, got {first[:80]!r}")
    skip = 1 if header is not None else 0
    _check_field_counts(path, sep, names, numeric)
    # '::' is read as ':' with the empty fields in between dropped (C engine; '::' would need Python).
    c_sep = ":" if sep == "::" else sep
    usecols = list(range(0, 2 * len(names), 2)) if sep == "::" else list(range(len(names)))
    dtypes = {c: (np.float64 if names[k] in numeric else str) for k, c in enumerate(usecols)}
    try:
        df = pd.read_csv(path, sep=c_sep, header=None, skiprows=skip, usecols=usecols, dtype=dtypes, engine="c",
                         skip_blank_lines=False, quoting=3, na_filter=True, keep_default_na=False, na_values=[""],
                         encoding="latin-1")
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, None, "file has no data rows") from None
    except (pd.errors.ParserError, ValueError):  # a value the C parser cannot read as a number
        raise _first_bad_line(path, sep, names, numeric, skip) from None
    df.columns = list(names)
    bad = df[[n for n in names if n in numeric]].isna().any(axis=1).to_numpy()
    if bad.any():
        raise diagnose(path, int(np.flatnonzero(bad)[0]) + 1 + skip, sep, names, numeric)
    if len(df) == 0:
        raise DataFormatError(path, None, "file has no data rows")
    for n in integer:
        col = df[n].to_numpy()
        frac = col != np.floor(col)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise DataFormatError(path, i + 1 + skip, f"non-integer {n} {col[i].item()!r}")
        df[n] = col.astype(np.int64)
    return df


def _check_field_counts(path: Path, sep: str, names: tuple[str, ...], numeric: tuple[str, ...]) -> None:
    """Every line must hold exactly len(names) fields: count separators in one streaming pass.

    The C parser pads short lines with NaN but silently drops extra fields, so this is what
    catches an extra field, and it pins down empty lines and wrong separators in text columns.
    """
    unit = sep[0].encode()
    per_line = (len(names) - 1) * len(sep)
    seps = lines = 0
    last = b"\n"
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            seps += chunk.count(unit)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    if seps != per_line * lines:
        with _open_text(path) as f:
            for i, line in enumerate(f, 1):
                if line.rstrip("\r\n").count(sep[0]) != per_line:
                    raise diagnose(path, i, sep, names, numeric)


def _first_bad_line(path: Path, sep: str, names: tuple[str, ...], numeric: tuple[str, ...], skip: int):
    """Slow path after the C parser rejected a value: find and explain the first bad line."""
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            fields = line.rstrip("\r\n").split(sep)
            if i > skip and not all(_is_number(v) for n, v in zip(names, fields) if n in numeric):
                return diagnose(path, i, sep, names, numeric)
    return DataFormatError(path, None, "cannot parse the file")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_ratings(path: Path, layout: Layout) -> pd.DataFrame:
    """Columns user, item, rating, stars, ts; sorted chronologically, equal timestamps by item id.

    Ordering ties by item id (not by file line) makes the stream a function of the ratings
    alone: `u.data`, RecBole's `.inter` or a re-sorted copy give the identical stream.
    """
    df = read_table(path, layout.sep, layout.columns, layout.header, numeric=layout.columns,
                    integer=tuple(c for c in layout.columns if c != "rating" or not layout.half_stars))
    r = df["rating"].to_numpy()
    valid = (r * 2 == np.round(r * 2)) & (r >= 0.5) & (r <= 5) if layout.half_stars else (r >= 1) & (r <= 5)
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        scale = "0.5..5 in half stars" if layout.half_stars else "1..5"
        raise DataFormatError(path, i + 1 + (layout.header is not None), f"rating {r[i].item()!r} outside {scale}")
    df["stars"] = np.floor(r).astype(np.int64)
    return df[["user", "item", "rating", "stars", "ts"]].sort_values(["user", "ts", "item"], kind="stable",
                                                                     ignore_index=True)


_USER_FORMATS = {  # file name -> (separator, fields, header)
    "users.dat": ("::", ("user", "gender", "age", "occupation", "zip"), None),
    "u.user": ("|", ("user", "age", "gender", "occupation", "zip"), None),
    "ml-100k.user": ("\t", ("user", "age", "gender", "occupation", "zip"),
                     ("user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token")),
}


def read_users(path: Path) -> pd.DataFrame:
    """Columns user, age (group code), gender (0=F, 1=M), occupation (raw string)."""
    import pandas as pd

    sep, names, header = _USER_FORMATS[path.name]
    df = read_table(path, sep, names, header, numeric=("user", "age"), integer=("user", "age"))
    bad = ~df["gender"].isin(["M", "F"]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(path, i + 1 + (header is not None), f"gender {df['gender'].iloc[i]!r} is not M or F")
    dup = df["user"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataFormatError(path, i + 1 + (header is not None), f"user {df['user'].iloc[i]} listed twice")
    group = np.searchsorted(np.array(AGE_GROUPS[1:]), df["age"].to_numpy(), side="right")
    return pd.DataFrame({"user": df["user"], "age": group, "gender": (df["gender"] == "M").astype(np.int64),
                         "occupation": df["occupation"]})


# ------------------------------------------------------------------------------- locating files
def locate(data_dir: Path | None, timestamps: bool = False) -> tuple[Layout, Path]:
    """The first (layout, folder) found: --data-dir, else each release's candidate folders.
    `timestamps`: only layouts with real rating times (not the reconstructed ML-1M file)."""
    folders = [Path(data_dir)] if data_dir is not None else [
        d for r in RELEASES for d in candidate_dirs(r.name, None)]
    layouts = [lay for lay in _LAYOUTS if lay.timestamps or not timestamps]
    for d in dict.fromkeys(folders):
        for layout in layouts:
            if (d / layout.ratings).is_file():
                return layout, d
    if timestamps and data_dir is not None and any((Path(data_dir) / lay.ratings).is_file() for lay in _LAYOUTS):
        raise DataNotFoundError(f"{data_dir} holds MovieLens ratings without timestamps (the reconstructed ML-1M file "
                                "keeps only the order of each user's ratings); the time-aware stream needs rating "
                                "times: use ML-100K (`curb data fetch ml-100k`), ML-1M's ratings.dat or ML-25M")
    raise DataNotFoundError(not_found_message("MovieLens ratings with timestamps" if timestamps else "MovieLens ratings",
                                              [r.name for r in RELEASES], folders))


# ------------------------------------------------------------------------------- the recipe
def _targets(df: pd.DataFrame, row_of: pd.Series) -> tuple[Targets, int]:
    vocab = np.unique(df["item"].to_numpy())
    labels = np.searchsorted(vocab, df["item"].to_numpy())
    return Targets.from_pairs(row_of[df["user"]].to_numpy(), labels), len(vocab)


def build_stream(ratings: pd.DataFrame, users: pd.DataFrame | None, name: str, release: str,
                 source: Path | str = "") -> TaskStream:
    """The `ml` stream from chronologically sorted ratings (and user attributes for profiles)."""
    import pandas as pd

    low = ratings[ratings["stars"] <= 3]
    low = low[low.groupby("user")["item"].transform("size") >= MIN_SEQ]
    kept = np.unique(low["user"].to_numpy())
    if len(kept) == 0:
        raise DataFormatError(source or name, None,
                              f"no user has {MIN_SEQ} or more movies rated below 4 stars: T1 is empty")
    row_of = pd.Series(np.arange(len(kept)), index=kept)
    # Position from the end of each user's chronological low-rated list; keep the last 30.
    from_end = low.groupby("user").cumcount(ascending=False).to_numpy()
    take = from_end < SEQ_LEN
    low = low[take]
    vocab = np.unique(low["item"].to_numpy())
    seqs = np.zeros((len(kept), SEQ_LEN), dtype=np.int64)
    seqs[row_of[low["user"]].to_numpy(), SEQ_LEN - 1 - from_end[take]] = np.searchsorted(vocab, low["item"]) + 1
    n = len(kept)
    tasks = [Task("T1", "next_item", len(vocab) + 1, Targets(np.arange(n), np.arange(n + 1), seqs[:, -1]),
                  description="last 30 movies rated below 4 stars (next item)")]
    keep_users = ratings["user"].isin(kept)
    for tname, stars in (("T2", 4), ("T3", 5)):
        part = ratings[keep_users & (ratings["stars"] == stars)]
        if len(part) == 0:
            raise DataFormatError(source or name, None, f"task {tname}: no kept user rated a movie {stars} stars")
        tg, n_labels = _targets(part, row_of)
        tasks.append(Task(tname, "recommend", n_labels, tg, description=f"movies rated {stars} stars"))
    if users is not None:
        u = users[users["user"].isin(kept)]
        rows = row_of[u["user"]].to_numpy()
        order = np.argsort(rows)
        rows = rows[order]
        ptr = np.arange(len(rows) + 1)
        occ_names, occ = np.unique(u["occupation"].to_numpy()[order], return_inverse=True)
        tasks += [
            Task("T4", "classify", len(AGE_GROUPS), Targets(rows, ptr, u["age"].to_numpy()[order]),
                 label_names=tuple(str(a) for a in AGE_GROUPS), description="age group"),
            Task("T5", "classify", 2, Targets(rows, ptr, u["gender"].to_numpy()[order]),
                 label_names=("F", "M"), description="gender"),
            Task("T6", "classify", len(occ_names), Targets(rows, ptr, occ.astype(np.int64)),
                 label_names=tuple(str(o) for o in occ_names), description="occupation"),
        ]
    return TaskStream(name, seqs, len(vocab) + 1, tuple(tasks), meta={"release": release},
                      item_ids=np.concatenate([[0], vocab]).astype(np.int64))


TIME_PERIODS = 3  # T1, T2, T3: one period each


def build_time_stream(ratings: pd.DataFrame, name: str, release: str, source: Path | str = "") -> TaskStream:
    """The time-aware `ml-time` stream (docs/datasets.md): the ratings' timeline is cut at the 1/3 and
    2/3 quantiles of all rating times into three periods of about equal numbers of ratings.

      T1 (period 1) next item: the last 30 movies each user rated below 4 stars by the end of period 1
         (users with at least 3).
      T2 (period 2) recommend: movies rated 4 stars during period 2, for users with at least 3
         below-4 movies by the end of period 2; input: the last 30 of them.
      T3 (period 3) recommend: movies rated 5 stars during period 3, likewise at the end of period 3.
    Item ids (input items: movies rated below 4 stars) are numbered by the period of their first
    such rating, then by movie id, so each task brings the movies first rated in its period. A row
    is one user's sequence at one period's end; T2 and T3 have their own target vocabularies.
    """
    bounds = np.quantile(ratings["ts"].to_numpy(), np.arange(1, TIME_PERIODS) / TIME_PERIODS)
    ratings = ratings.assign(period=np.searchsorted(bounds, ratings["ts"].to_numpy(), side="right"))
    low = ratings[ratings["stars"] <= 3]
    first = low.groupby("item")["period"].min()
    order = np.lexsort((first.index.to_numpy(), first.to_numpy()))  # by first period, then movie id
    movies = first.index.to_numpy()[order]
    id_of = pd.Series(np.arange(1, len(movies) + 1), index=movies)
    vocab = [1 + int((first.to_numpy() <= p).sum()) for p in range(TIME_PERIODS)]
    seqs, tasks, offset = [], [], 0
    for p, (tname, stars) in enumerate((("T1", None), ("T2", 4), ("T3", 5))):
        past = low[low["period"] <= p]
        n_low = past.groupby("user").size()
        users = np.sort(n_low.index[n_low.to_numpy() >= MIN_SEQ].to_numpy())
        if stars is not None:
            part = ratings[(ratings["period"] == p) & (ratings["stars"] == stars) & ratings["user"].isin(users)]
            users = np.unique(part["user"].to_numpy())
        if len(users) == 0:
            raise DataFormatError(source or name, None, f"task {tname}: no user qualifies in period {p + 1}")
        past = past[past["user"].isin(users)]
        from_end = past.groupby("user").cumcount(ascending=False).to_numpy()
        take = from_end < SEQ_LEN
        row_of = pd.Series(np.arange(len(users)), index=users)
        block = np.zeros((len(users), SEQ_LEN), dtype=np.int64)
        block[row_of[past["user"][take]].to_numpy(), SEQ_LEN - 1 - from_end[take]] = id_of[past["item"][take]].to_numpy()
        seqs.append(block)
        if stars is None:
            n = len(users)
            tasks.append(Task(tname, "next_item", vocab[p], Targets(np.arange(n), np.arange(n + 1), block[:, -1]),
                              description="last 30 movies rated below 4 stars by the end of period 1 (next item)",
                              vocab=vocab[p]))
        else:
            tg, n_labels = _targets(part, row_of + offset)
            tasks.append(Task(tname, "recommend", n_labels, tg, description=f"movies rated {stars} stars in period "
                              f"{p + 1}", vocab=vocab[p]))
        offset += len(users)
    spans = [int(ratings["ts"].min()), *map(float, bounds), int(ratings["ts"].max())]
    meta = {"release": release, "time_aware": True, "period_bounds": spans,
            "new_items": {t.name: t.vocab - (tasks[k - 1].vocab if k else 1) for k, t in enumerate(tasks)}}
    return TaskStream(name, np.concatenate(seqs), vocab[-1], tuple(tasks), meta=meta,
                      item_ids=np.concatenate([[0], movies]).astype(np.int64))


def load_time(data_dir: Path | None) -> TaskStream:
    layout, folder = locate(data_dir, timestamps=True)
    rpath = folder / layout.ratings

    def parse() -> TaskStream:
        stream = build_time_stream(read_ratings(rpath, layout), "ml-time", layout.release, rpath)
        check_splittable(stream, {t.name: rpath for t in stream.tasks})
        return stream

    return cached_build("ml-time", [rpath], parse)


def load(data_dir: Path | None, profile: bool) -> TaskStream:
    layout, folder = locate(data_dir)
    rpath = folder / layout.ratings
    sources = [rpath]
    upath = None
    if profile:
        if layout.users is None:
            raise DataNotFoundError(
                f"{rpath} is {get_release(layout.release).title}: GroupLens ships no user attributes with it, so "
                "the profile tasks of `ml-profile` (age, gender, occupation) cannot be built. Use dataset `ml` "
                "for this release, or ML-1M / ML-100K for profile tasks (`curb data fetch ml-1m`).")
        upath = folder / layout.users
        if not upath.is_file():
            raise DataNotFoundError(f"profile tasks need the user file {upath}, which is missing (found the ratings "
                                    f"{rpath}); reinstall the release with `curb data fetch {layout.release} --force`")
        sources.append(upath)
    name = "ml-profile" if profile else "ml"

    def parse() -> TaskStream:
        stream = build_stream(read_ratings(rpath, layout), read_users(upath) if upath else None, name, layout.release,
                              rpath)
        check_splittable(stream, {t.name: (upath if t.kind == "classify" else rpath) for t in stream.tasks})
        return stream

    return cached_build(name, sources, parse)


# ------------------------------------------------------------------------------- item titles
_TITLE_FORMATS = {  # file name -> (separator, fields, header); the title is field 1 (RecBole: + year, field 2)
    "movies.dat": ("::", ("item", "title", "genres"), None),
    "u.item": ("|", ("item", "title", "date", "video_date", "url", *(f"genre{k}" for k in range(19))), None),
    "ml-100k.item": ("\t", ("item", "title", "year", "genres"),
                     ("item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq")),
    "movies.csv": (",", ("item", "title", "genres"), ("movieId", "title", "genres")),
}


def read_titles(path: Path) -> ItemTexts:
    """Movie id -> title from a GroupLens / RecBole item file, strictly (file, line, problem)."""
    sep, names, header = _TITLE_FORMATS[path.name]
    raw = path.read_bytes().decode("utf-8" if path.suffix == ".csv" else "latin-1")  # GroupLens' encodings
    if not raw.strip():
        raise DataFormatError(path, None, "file is empty")
    if sep == ",":  # ML-25M quotes titles holding commas
        rows = list(csv.reader(io.StringIO(raw)))
        lines = [",".join(r) for r in rows]
    else:
        lines = raw.splitlines()
        rows = [line.split(sep) for line in lines]
    skip = 1 if header is not None else 0
    if header is not None and tuple(rows[0]) != header:
        raise DataFormatError(path, 1, f"expected the header {sep.join(header)!r}, got {lines[0][:80]!r}")
    ids, texts = [], []
    for lineno, fields in enumerate(rows[skip:], skip + 1):
        if len(fields) != len(names):
            if sep == ",":
                raise DataFormatError(path, lineno, f"{len(fields)} fields, expected {len(names)} ({sep.join(names)}) "
                                                    f"in {lines[lineno - 1][:80]!r}")
            raise diagnose(path, lineno, sep, names, numeric=("item",))
        if not fields[0].isdigit():
            raise DataFormatError(path, lineno, f"movie id {fields[0]!r} is not a non-negative integer")
        title = fields[1].strip()
        if not title:
            raise DataFormatError(path, lineno, f"empty title for movie {fields[0]}")
        year = fields[2].strip() if path.name == "ml-100k.item" else ""
        ids.append(int(fields[0]))
        texts.append(f"{title} ({year})" if year else title)  # RecBole splits the year off GroupLens' title
    ids_a = np.array(ids, dtype=np.int64)
    uniq, first, counts = np.unique(ids_a, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = int(np.flatnonzero(counts > 1)[0])
        again = int(np.flatnonzero(ids_a == uniq[k])[1])
        raise DataFormatError(path, again + 1 + skip, f"movie {uniq[k]} listed twice")
    return ItemTexts(ids_a, tuple(texts), path)


def load_titles(data_dir: Path | None) -> ItemTexts:
    """The titles of the release the stream is built from (same lookup as the ratings)."""
    return read_titles(_title_path(*locate(data_dir)))


def _title_path(layout: Layout, folder: Path) -> Path:
    path = folder / layout.items
    if not path.is_file():
        raise DataNotFoundError(f"backbone.item_init=text reads the movie titles from {path}, which is missing (found "
                                f"the ratings {folder / layout.ratings}); reinstall the release with "
                                f"`curb data fetch {layout.release} --force`, or use backbone.item_init=random")
    return path


@register_dataset("ml", "MovieLens (ML-1M, ML-100K or ML-25M files): T1 clicks (<4 stars), T2 4-star, T3 5-star",
                  defaults={"preset": "paper"}, version=VERSION, releases=("ml-1m", "ml-100k", "ml-25m"),
                  item_texts=load_titles)
def build_ml(data_dir: Path | None = None) -> TaskStream:
    return load(data_dir, profile=False)


@register_dataset("ml-time", "time-aware MovieLens (ratings with timestamps; ML-100K here): T1, T2, T3 in three "
                  "successive periods, each bringing the movies first rated in it (docs/datasets.md)",
                  defaults={"preset": "paper"}, version=VERSION, releases=("ml-100k", "ml-1m", "ml-25m"),
                  item_texts=lambda data_dir: read_titles(_title_path(*locate(data_dir, timestamps=True))))
def build_ml_time(data_dir: Path | None = None) -> TaskStream:
    return load_time(data_dir)


@register_dataset("ml-profile", "MovieLens + profile tasks: T4 age, T5 gender, T6 occupation (curb extension)",
                  defaults={"preset": "paper"}, version=VERSION, releases=("ml-1m", "ml-100k"), item_texts=load_titles)
def build_ml_profile(data_dir: Path | None = None) -> TaskStream:
    return load(data_dir, profile=True)
