"""`ml` / `ml-profile`: the paper's MovieLens stream built from real ratings (METHODS.md §2.1).

Recipe (per user, ratings in chronological order):
  T1 next-item: the last 30 movies rated <= 3, left-padded with 0; users with fewer than 3 such
     movies are dropped (they have no usable sequence).
  T2 recommend: every movie the user rated 4 stars.   T3 recommend: every movie rated 5 stars.
  T2/T3 read the same T1 sequence; each task has its own target vocabulary (sorted movie ids).
  `ml-profile` adds T4 age (7 groups), T5 gender, T6 occupation (21) from the user file.

Files understood (release detected from what is present in the data directory):
  ML-1M   official `ratings.dat` (+ `users.dat`), or `ratings_reconstructed.csv.gz`
          (user_id,movie_id,rating,seq_idx,orig_line; chronological `seq_idx`)
  ML-100K official `u.data` (+ `u.user`), or RecBole atomic `ml-100k.inter` (+ `ml-100k.user`)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from curb.data import DataFormatError, DataNotFoundError, candidate_dirs, register_dataset
from curb.streams import Targets, Task, TaskStream

SEQ_LEN = 30
MIN_SEQ = 3
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M age codes; ML-100K ages are bucketed into them
RELEASES = ("ml-1m", "ml-100k")

# (release, ratings file, users file, reader)
_LAYOUTS = (
    ("ml-1m", "ratings.dat", "users.dat"),
    ("ml-1m", "ratings_reconstructed.csv.gz", "users.dat"),
    ("ml-100k", "u.data", "u.user"),
    ("ml-100k", "ml-100k.inter", "ml-100k.user"),
)


def _check_numeric(df: pd.DataFrame, path: Path, first_line: int, ncols: int) -> pd.DataFrame:
    """Fail with file:line on the first row that is not `ncols` integers."""
    bad = df.isna().any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(path, first_line + i, f"expected {ncols} integer fields, got {df.iloc[i].tolist()}")
    return df.astype(np.int64)


def _read_table(path: Path, sep: str, names: list[str], usecols: list[int] | None = None,
                header: int | None = None, compression: str = "infer") -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=sep, header=header, names=None if usecols else names, usecols=usecols,
                         dtype=str, engine="c", compression=compression, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, None, "file is empty") from None
    except pd.errors.ParserError as e:
        raise DataFormatError(path, None, f"cannot parse: {e}") from None
    if len(df) == 0:
        raise DataFormatError(path, None, "file has no rows")
    df.columns = names
    return df.apply(pd.to_numeric, errors="coerce")


def read_ratings(path: Path) -> pd.DataFrame:
    """Columns user, item, rating, order (chronological sort key, ties by file order)."""
    name = path.name
    if name == "ratings.dat":  # UserID::MovieID::Rating::Timestamp
        df = _read_table(path, ":", ["user", "item", "rating", "ts"], usecols=[0, 2, 4, 6])
        df = _check_numeric(df, path, 1, 4)
    elif name == "ratings_reconstructed.csv.gz":
        df = _read_table(path, ",", ["user", "item", "rating", "ts", "orig"], header=0)
        df = _check_numeric(df, path, 2, 5)[["user", "item", "rating", "ts"]]
    elif name == "u.data":  # user \t item \t rating \t timestamp
        df = _check_numeric(_read_table(path, "\t", ["user", "item", "rating", "ts"]), path, 1, 4)
    elif name.endswith(".inter"):  # RecBole: header user_id:token item_id:token rating:float timestamp:float
        df = _check_numeric(_read_table(path, "\t", ["user", "item", "rating", "ts"], header=0), path, 2, 4)
    else:
        raise DataFormatError(path, None, "unknown ratings file name")
    if not df["rating"].between(1, 5).all():
        i = int(np.flatnonzero(~df["rating"].between(1, 5).to_numpy())[0])
        raise DataFormatError(path, i + 1, f"rating {df['rating'].iloc[i]} outside 1..5")
    df["line"] = np.arange(len(df))
    return df.sort_values(["user", "ts", "line"], kind="stable").reset_index(drop=True)


def read_users(path: Path) -> pd.DataFrame:
    """Columns user, age (group code), gender (0=F, 1=M), occupation (raw string)."""
    if path.name == "users.dat":  # UserID::Gender::Age::Occupation::Zip
        raw = pd.read_csv(path, sep=":", header=None, usecols=[0, 2, 4, 6], dtype=str, engine="c")
        raw.columns = ["user", "gender", "age", "occupation"]
    elif path.name == "u.user":  # id|age|gender|occupation|zip
        raw = pd.read_csv(path, sep="|", header=None, usecols=[0, 1, 2, 3], dtype=str, engine="c")
        raw.columns = ["user", "age", "gender", "occupation"]
    else:  # RecBole .user: user_id age gender occupation zip_code (tab, header)
        raw = pd.read_csv(path, sep="\t", header=0, usecols=[0, 1, 2, 3], dtype=str, engine="c")
        raw.columns = ["user", "age", "gender", "occupation"]
    user = pd.to_numeric(raw["user"], errors="coerce")
    age = pd.to_numeric(raw["age"], errors="coerce")
    bad = user.isna() | age.isna() | ~raw["gender"].isin(["M", "F"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(path, i + 1, f"bad user row {raw.iloc[i].tolist()}")
    group = np.searchsorted(np.array(AGE_GROUPS[1:]), age.to_numpy(), side="right")
    return pd.DataFrame({"user": user.astype(np.int64), "age": group, "gender": (raw["gender"] == "M").astype(np.int64),
                         "occupation": raw["occupation"]})


def locate(data_dir: Path | None) -> tuple[str, Path, Path]:
    """Find (release, ratings file, users file) in the candidate directories."""
    tried = []
    for d in candidate_dirs("ml-1m", data_dir) + ([] if data_dir else candidate_dirs("ml-100k", None)):
        for release, rname, uname in _LAYOUTS:
            tried.append(str(d / rname))
            if (d / rname).is_file():
                return release, d / rname, d / uname
    raise DataNotFoundError(
        "MovieLens ratings not found. Looked for:\n  " + "\n  ".join(dict.fromkeys(tried)) +
        "\nGet the data with `curb data fetch ml-1m` (or ml-100k), or download "
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip yourself, unzip it and pass "
        "--data-dir DIR (or set CURB_DATA to the folder holding ml-1m/)."
    )


def _targets(df: pd.DataFrame, user_row: dict | pd.Series) -> tuple[Targets, int, np.ndarray]:
    vocab = np.unique(df["item"].to_numpy())
    labels = np.searchsorted(vocab, df["item"].to_numpy())
    return Targets.from_pairs(df["user"].map(user_row).to_numpy(), labels), len(vocab), vocab


def build_stream(ratings: pd.DataFrame, users: pd.DataFrame | None, name: str, release: str) -> TaskStream:
    low = ratings[ratings["rating"] <= 3]
    n_low = low.groupby("user")["item"].transform("size")
    low = low[n_low >= MIN_SEQ]
    kept = np.unique(low["user"].to_numpy())
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
                  description="last 30 movies rated <= 3 (next item)")]
    keep_users = ratings["user"].isin(kept)
    for tname, stars in (("T2", 4), ("T3", 5)):
        part = ratings[keep_users & (ratings["rating"] == stars)]
        tg, n_labels, _ = _targets(part, row_of)
        tasks.append(Task(tname, "recommend", n_labels, tg, description=f"movies rated {stars} stars"))
    if users is not None:
        u = users[users["user"].isin(kept)].drop_duplicates("user")
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
    return TaskStream(name, seqs, len(vocab) + 1, tuple(tasks), meta={"release": release})


def load(data_dir: Path | None, profile: bool) -> TaskStream:
    release, rpath, upath = locate(data_dir)
    ratings = read_ratings(rpath)
    users = None
    if profile:
        if not upath.is_file():
            raise DataNotFoundError(f"profile tasks need the user file {upath}, which is missing")
        users = read_users(upath)
    stream = build_stream(ratings, users, "ml-profile" if profile else "ml", release)
    stream.meta.update(source=str(rpath))
    return stream


@register_dataset("ml", "MovieLens (ML-1M or ML-100K files): T1 clicks (<=3 stars), T2 4-star, T3 5-star",
                  defaults={"preset": "paper"})
def build_ml(data_dir: Path | None = None) -> TaskStream:
    return load(data_dir, profile=False)


@register_dataset("ml-profile", "MovieLens + profile tasks: T4 age, T5 gender, T6 occupation (curb extension)",
                  defaults={"preset": "paper"})
def build_ml_profile(data_dir: Path | None = None) -> TaskStream:
    return load(data_dir, profile=True)
