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
import re
import zlib
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
class Field:
    """One field of a raw line: the exact form a valid value takes, and what it means for messages."""

    name: str
    pattern: str = r"0|[1-9][0-9]{0,17}"  # an id: digits only, no sign, exponent, spaces or leading zeros
    want: str = "a plain non-negative integer (digits only: no sign, exponent, decimal point, spaces or leading zeros)"
    kind: type = int  # the column's type once the line is valid: int, float or str


RATING = Field("rating", r"[0-9](?:\.[0-9]{1,2})?", "a star rating such as 4 or 3.5", float)
GENDER = Field("gender", "[MF]", "M or F", str)
ZIP = Field("zip", r"[^\t|:\r\n]*", "a zip code", str)  # read, not used
# ML-100K's 21 occupations (its u.occupation file; RecBole's ml-100k.user uses the same names).
OCCUPATIONS_100K = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
                    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
                    "retired", "salesman", "scientist", "student", "technician", "writer")
RATING_FIELDS = (Field("user"), Field("item"), RATING, Field("ts"))


@dataclass(frozen=True)
class Layout:
    """One official file format: how to read its ratings and (if any) its user attributes."""

    release: str
    ratings: str
    users: str | None
    sep: str  # field separator as written in the file
    columns: tuple[Field, ...]  # every field of a ratings line, in order
    header: tuple[str, ...] | None = None  # exact header line fields, when the file has one
    half_stars: bool = False
    items: str = ""  # the file holding the movie titles
    timestamps: bool = True  # `ts` is a rating time (False: only each user's order, as in the rebuilt ML-1M)


_LAYOUTS = (
    Layout("ml-1m", "ratings.dat", "users.dat", "::", RATING_FIELDS, items="movies.dat"),
    Layout("ml-1m", "ratings_reconstructed.csv.gz", "users.dat", ",", (*RATING_FIELDS, Field("orig")),
           ("user_id", "movie_id", "rating", "seq_idx", "orig_line"), items="movies.dat", timestamps=False),
    Layout("ml-100k", "u.data", "u.user", "\t", RATING_FIELDS, items="u.item"),
    Layout("ml-100k", "ml-100k.inter", "ml-100k.user", "\t", RATING_FIELDS,
           ("user_id:token", "item_id:token", "rating:float", "timestamp:float"), items="ml-100k.item"),
    Layout("ml-25m", "ratings.csv", None, ",", RATING_FIELDS, ("userId", "movieId", "rating", "timestamp"),
           half_stars=True, items="movies.csv"),
)


# ------------------------------------------------------------------------------- strict reading
def _read_text(path: Path) -> str:
    """The file's text (latin-1, as GroupLens writes it; gzip unpacked); a damaged archive is a DataFormatError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read().decode("latin-1")
        return path.read_bytes().decode("latin-1")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(path, None, f"damaged gzip file ({e}): truncated, or not gzip at all") from None


_OTHER_SEPS = ("::", "\t", ",", "|", ";", " ")


def diagnose(path: Path, lineno: int, line: str, sep: str, fields: tuple[Field, ...]) -> DataFormatError:
    """The precise problem of one line: empty, wrong separator, truncated, extra field, bad value."""
    line = line.rstrip("\r")
    names = sep.join(f.name for f in fields)
    if not line.strip():
        return DataFormatError(path, lineno, "empty line")
    values = line.split(sep)
    if len(values) == 1:
        found = [s for s in _OTHER_SEPS if s != sep and s in line]
        if found:
            return DataFormatError(path, lineno, f"wrong separator: expected {sep!r} between fields, found "
                                                 f"{found[0]!r} in {line[:80]!r}")
    if len(values) < len(fields):
        return DataFormatError(path, lineno, f"truncated line: {len(values)} of {len(fields)} fields ({names}) "
                                             f"in {line[:80]!r}")
    if len(values) > len(fields):
        return DataFormatError(path, lineno, f"{len(values)} fields, expected {len(fields)} ({names}) in {line[:80]!r}")
    for f, v in zip(fields, values):
        if not re.fullmatch(f.pattern, v):
            return DataFormatError(path, lineno, _bad_value(f, v))
    return DataFormatError(path, lineno, f"malformed line {line[:80]!r}")


def _bad_value(f: Field, v: str) -> str:
    if f.kind is str:
        return f"{f.name} {v[:40]!r} is not {f.want}"
    try:
        x = float(v)
    except ValueError:
        return f"non-numeric {f.name} {v[:40]!r}"
    if f.kind is int and math.isfinite(x) and x != math.floor(x):
        return f"non-integer {f.name} {v}"
    return f"{f.name} {v[:40]!r} is not {f.want}"


def _line_pattern(sep: str, fields: tuple[Field, ...]) -> re.Pattern:
    line = re.escape(sep).join(f"(?:{f.pattern})" for f in fields)
    return re.compile(rf"(?:{line}\r?\n)*")


def read_table(path: Path, sep: str, fields: tuple[Field, ...], header: tuple[str, ...] | None) -> pd.DataFrame:
    """Read a delimited file strictly: every line must match its fields' exact forms (one regular
    expression over the whole file, ~100 MB/s), else the first bad line is explained with the file,
    its number and the problem (`diagnose`). Only then are the columns parsed, in C, with a `line`
    column (1-based line numbers) for later checks to cite."""
    import pandas as pd

    text = _read_text(path)
    if not text:
        raise DataFormatError(path, 1, "file is empty")
    skip = 1 if header is not None else 0
    if header is not None:
        first, _, text = text.partition("\n")
        if tuple(first.rstrip("\r").split(sep)) != header:
            raise DataFormatError(path, 1, f"expected the header {sep.join(header)!r}, got {first[:80]!r}")
    if not text.endswith("\n"):
        text += "\n"
    if not text.strip():
        raise DataFormatError(path, 1 + skip, "file has no data rows" if skip else "empty line")
    end = _line_pattern(sep, fields).match(text).end()
    if end < len(text):
        raise diagnose(path, text.count("\n", 0, end) + 1 + skip, text[end:text.find("\n", end)], sep, fields)
    # '::' is read as ':' with the empty fields in between dropped (C engine; '::' would need Python).
    c_sep = ":" if sep == "::" else sep
    usecols = list(range(0, 2 * len(fields), 2)) if sep == "::" else list(range(len(fields)))
    dtypes = {c: {int: np.int64, float: np.float64, str: str}[f.kind] for c, f in zip(usecols, fields)}
    df = pd.read_csv(io.StringIO(text), sep=c_sep, header=None, usecols=usecols, dtype=dtypes, engine="c",
                     quoting=3, na_filter=False)
    df.columns = [f.name for f in fields]
    df["line"] = np.arange(len(df), dtype=np.int64) + 1 + skip
    return df


def read_ratings(path: Path, layout: Layout) -> pd.DataFrame:
    """Columns user, item, rating, stars, ts, line; sorted chronologically, equal timestamps by item id.

    Ordering ties by item id (not by file line) makes the stream a function of the ratings
    alone: `u.data`, RecBole's `.inter` or a re-sorted copy give the identical stream. A user
    rating one movie twice (a duplicated or concatenated file) is an error: MovieLens has one
    rating per user and movie, and silently doubled histories would change who is kept.
    """
    df = read_table(path, layout.sep, layout.columns, layout.header)
    r = df["rating"].to_numpy()
    grid = r * 2 if layout.half_stars else r  # half stars, or whole stars
    valid = (grid == np.round(grid)) & (r >= (0.5 if layout.half_stars else 1)) & (r <= 5)
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        scale = "0.5..5 in half stars" if layout.half_stars else "1..5"
        raise DataFormatError(path, int(df["line"].iat[i]), f"rating {r[i]:g} outside {scale}")
    twice = df.duplicated(["user", "item"]).to_numpy()
    if twice.any():
        i = int(np.flatnonzero(twice)[0])
        u, m = df["user"].iat[i], df["item"].iat[i]
        first = int(df["line"][(df["user"] == u) & (df["item"] == m)].iat[0])
        raise DataFormatError(path, int(df["line"].iat[i]), f"user {u} rated movie {m} again (first on line {first}): "
                                                            "a duplicated or concatenated file?")
    df["stars"] = np.floor(r).astype(np.int64)
    return df[["user", "item", "rating", "stars", "ts", "line"]].sort_values(["user", "ts", "item"], kind="stable",
                                                                             ignore_index=True)


AGE_100K = Field("age", "[1-9][0-9]?|1[01][0-9]|120", "an age in years, 1..120")
OCCUPATION_100K = Field("occupation", "|".join(OCCUPATIONS_100K), f"one of the ML-100K occupations "
                                                                   f"({', '.join(OCCUPATIONS_100K)})", str)
_USER_FORMATS = {  # file name -> (separator, fields, header)
    "users.dat": ("::", (Field("user"), GENDER, Field("age", "|".join(map(str, AGE_GROUPS)), "an ML-1M age code ("
                                                      + ", ".join(map(str, AGE_GROUPS)) + ")"),
                         Field("occupation", "[0-9]|1[0-9]|20", "an ML-1M occupation code 0..20", str), ZIP), None),
    "u.user": ("|", (Field("user"), AGE_100K, GENDER, OCCUPATION_100K, ZIP), None),
    "ml-100k.user": ("\t", (Field("user"), AGE_100K, GENDER, OCCUPATION_100K, ZIP),
                     ("user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token")),
}


def read_users(path: Path) -> pd.DataFrame:
    """Columns user, age (group code), gender (0=F, 1=M), occupation (raw string), line."""
    import pandas as pd

    sep, fields, header = _USER_FORMATS[path.name]
    df = read_table(path, sep, fields, header)
    dup = df["user"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataFormatError(path, int(df["line"].iat[i]), f"user {df['user'].iat[i]} listed twice")
    group = np.searchsorted(np.array(AGE_GROUPS[1:]), df["age"].to_numpy(), side="right")
    return pd.DataFrame({"user": df["user"], "age": group, "gender": (df["gender"] == "M").astype(np.int64),
                         "occupation": df["occupation"], "line": df["line"]})


def check_users_known(ratings: pd.DataFrame, users: pd.DataFrame, rpath: Path, upath: Path) -> None:
    """Every rating user must have attributes: a user missing from the user file would silently be
    left out of the profile tasks (T4-T6) while being in T1-T3."""
    unknown = ~ratings["user"].isin(users["user"]).to_numpy()
    if unknown.any():
        line = int(ratings["line"][unknown].min())
        user = int(ratings["user"][ratings["line"] == line].iat[0])
        raise DataFormatError(rpath, line, f"user {user} has no line in the user file {upath.name} (the profile tasks "
                                           f"need every user's age, gender and occupation)")


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
    import pandas as pd

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
        ratings, users = read_ratings(rpath, layout), read_users(upath) if upath else None
        if users is not None:
            check_users_known(ratings, users, rpath, upath)
        stream = build_stream(ratings, users, name, layout.release, rpath)
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
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8" if path.suffix == ".csv" else "latin-1")  # GroupLens' encodings
    except UnicodeDecodeError as e:
        raise DataFormatError(path, data.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
    if not raw.strip():
        raise DataFormatError(path, None, "file is empty")
    if sep == ",":  # ML-25M quotes titles holding commas
        reader = csv.reader(io.StringIO(raw), strict=True)
        try:
            rows = list(reader)
        except csv.Error as e:
            raise DataFormatError(path, reader.line_num, f"malformed CSV: {e}") from None
        lines = [",".join(r) for r in rows]
    else:
        lines = raw.splitlines()
        rows = [line.split(sep) for line in lines]
    skip = 1 if header is not None else 0
    if header is not None and tuple(rows[0]) != header:
        raise DataFormatError(path, 1, f"expected the header {sep.join(header)!r}, got {lines[0][:80]!r}")
    ids, texts = [], []
    movie = Field("movie id")
    for lineno, fields in enumerate(rows[skip:], skip + 1):
        if len(fields) != len(names):
            if sep == ",":
                raise DataFormatError(path, lineno, f"{len(fields)} fields, expected {len(names)} ({sep.join(names)}) "
                                                    f"in {lines[lineno - 1][:80]!r}")
            raise diagnose(path, lineno, lines[lineno - 1], sep, tuple(Field(n, ".*", "", str) for n in names))
        if not re.fullmatch(movie.pattern, fields[0]):
            raise DataFormatError(path, lineno, f"movie id {fields[0][:40]!r} is not {movie.want}")
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
