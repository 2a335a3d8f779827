"""Result files, checkpoints and caches: written atomically and sealed with a checksum.

A result is one JSON per cell; it is only trusted when it parses, has the current schema and
its checksum matches. Binary state (checkpoints, the pre-trained T1 cache) is a *sealed* file:
a magic line, the SHA-256 of the rest, a one-line JSON header and a torch payload loaded with
`weights_only=True` (tensors, numbers, strings, containers and numpy arrays; never arbitrary
pickled code). A damaged file of either kind raises `ResultError`: it is reported and
recomputed, never silently used.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import numpy as np

from .errors import CurbError

SCHEMA = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only be read by setting it)


class ResultError(CurbError, ValueError):
    """A result or checkpoint file is damaged or from another schema."""


class MisplacedResultError(ResultError):
    """A valid result file at another cell's path (copied or moved there)."""


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def checksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from a cluster's other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# `.<name>.<8 random characters>.tmp`: what `atomic_write_bytes` leaves when killed mid-write.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
STALE_TEMP_S = 3600  # no write of curb's takes an hour: an older temporary file is a killed write's


def remove_stale_temp_files(root: Path, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Delete the temporary files killed writes left under `root` (last written over
    `older_than_s` ago, so a write in progress is never touched); returns what was removed."""
    removed = []
    cutoff = time.time() - older_than_s
    for p in Path(root).rglob(".*.tmp"):
        try:
            if _TEMP_NAME.fullmatch(p.name) and p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed.append(p)
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return sorted(removed)


def save_result(path: Path, result: dict) -> None:
    result = {**result, "schema": SCHEMA}
    result["checksum"] = checksum(result)
    atomic_write_bytes(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())


def load_result(path: Path, spec_hash: str | None = None) -> dict:
    """A verified result: it parses, has the current schema and every key its readers use
    (`check_schema`), and its checksum matches. With `spec_hash`, it must also be that cell's
    result: a file copied or moved to another cell's path is refused, never used as that cell's."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultError(f"{path}: unreadable result file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise ResultError(f"{path}: not a curb result of schema {SCHEMA}")
    if obj.get("checksum") != checksum(obj):
        raise ResultError(f"{path}: checksum mismatch (file was modified or truncated)")
    problem = check_schema(obj)
    if problem:
        raise ResultError(f"{path}: not a valid curb result: {problem}")
    if spec_hash is not None and obj["spec_hash"] != spec_hash:
        spec = obj["spec"]
        raise MisplacedResultError(f"{path}: holds the result of another cell ({obj['spec_hash']}: {spec['dataset']}/"
                                   f"{spec.get('method', spec.get('init'))} seed {spec['seed']}), not of cell "
                                   f"{spec_hash}: a misplaced file")
    return obj


def iter_results(root: Path) -> Iterator[tuple[Path, dict | ResultError]]:
    """Every result JSON under `root` (sorted), or the error that made it untrustworthy.

    Hidden files and folders (`.cache/`, `.cells/`: caches, checkpoints, failure records) are
    not results. A result file is named `...-<spec hash>.json`: one whose content is another
    cell's (a copy or a move) is misplaced, and a second file of the same cell is a duplicate;
    both are errors, so no cell is counted twice or under another cell's name.
    """
    root = Path(root)
    first: dict[str, Path] = {}
    for p in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        try:
            r = load_result(p, spec_hash=p.stem.rsplit("-", 1)[-1])
        except ResultError as e:
            yield p, e
            continue
        if r["spec_hash"] in first:
            yield p, ResultError(f"{p}: a second copy of the result {first[r['spec_hash']]} (same cell); not used")
            continue
        first[r["spec_hash"]] = p
        yield p, r


# ---------------------------------------------------------------------------------- schema
_NUM = (int, float)
_ENV = {"curb": str, "torch": str, "python": str, "device": str, "device_name": str, "machine": str, "threads": int}
_CELL = {
    "spec": {"method": str, "dataset": str, "order": str, "noise": (int, None), "seed": int, "preset": (str, None),
             "overrides": dict},
    "spec_hash": str, "env": _ENV, "created": str,
    "dataset": {"name": str, "fingerprint": str, "base_fingerprint": str, "n_users": int, "n_items": int, "meta": dict},
    "config": {"preset": str, "backbone": dict, "train": dict, "split": dict, "method": dict},
    "tasks": list, "R": list, "metrics": list, "final": dict, "transfer": (dict, None), "fits": list,
    "method_report": dict, "timings": {"total_s": _NUM, "tasks": list}, "resumed_at": list,
}
_COLD_START = {
    "kind": str, "spec": {"dataset": str, "init": str, "after": (str, None), "view": str, "holdout": str, "seed": int,
                          "preset": (str, None), "overrides": dict, "ncf": dict},
    "spec_hash": str, "source": str, "env": _ENV, "created": str,
    "dataset": {"name": str, "fingerprint": str, "meta": dict}, "config": {"ncf": dict, "dim": int},
    "data": dict, "groups": dict, "representation": (dict, None), "timings": {"total_s": _NUM},
}


def check_schema(obj: dict) -> str | None:
    """The first problem that would make a reader of this result fail (a missing key, a value of
    the wrong type, an R matrix not matching the task list, a spec_hash not matching the spec), or
    None. A checksum only proves the file is as written, not that it is complete."""
    problem = _check_keys(obj, _COLD_START if obj.get("kind") == "cold-start" else _CELL, "")
    if problem:
        return problem
    if obj["spec_hash"] != hashlib.sha256(canonical(obj["spec"]).encode()).hexdigest()[:12]:
        return f"spec_hash {obj['spec_hash']!r} does not match its spec"
    return None if obj.get("kind") == "cold-start" else _check_cell(obj)


def _check_keys(obj: dict, schema: dict, where: str) -> str | None:
    for key, want in schema.items():
        name = f"{where}{key}"
        if key not in obj:
            return f"missing key {name!r}"
        v = obj[key]
        if isinstance(want, dict):
            if not isinstance(v, dict):
                return f"{name!r} must be an object"
            problem = _check_keys(v, want, f"{name}.")
            if problem:
                return problem
        elif not _is(v, want if isinstance(want, tuple) else (want,)):
            return f"{name!r} has the wrong type ({type(v).__name__})"
    return None


def _is(v: object, types: tuple) -> bool:
    if v is None:
        return None in types
    if isinstance(v, bool):  # JSON true/false is never a count or a score
        return bool in types
    return isinstance(v, tuple(t for t in types if t is not None))


def _check_cell(obj: dict) -> str | None:
    """R, metrics, final and transfer must fit the task list (m tasks: m x m matrices)."""
    tasks = obj["tasks"]
    if not tasks or not all(isinstance(t, dict) and _is(t.get("name"), (str,)) and _is(t.get("metric"), (str,))
                            and _is(t.get("kind"), (str,)) for t in tasks):
        return "'tasks' must be a non-empty list of objects with a name, kind and metric"
    names = [t["name"] for t in tasks]
    m = len(names)
    for key, cell in (("R", (int, float, None)), ("metrics", (dict, None))):
        rows = obj[key]
        if len(rows) != m or not all(isinstance(row, list) and len(row) == m and all(_is(x, cell) for x in row)
                                     for row in rows):
            what = "numbers" if key == "R" else "objects"
            return f"{key!r} must be a {m}x{m} matrix (one row and column per task) of {what} or null"
    if set(obj["final"]) != set(names) or not all(_is(v, (int, float, None)) for v in obj["final"].values()):
        return f"'final' must map every task ({', '.join(names)}) to a number or null"
    tr = obj["transfer"]
    if tr is not None and not all(isinstance(tr.get(k), list) and len(tr[k]) == m and
                                  all(_is(x, (int, float, None)) for x in tr[k]) for k in ("bwt", "fwt")):
        return f"'transfer' must hold 'bwt' and 'fwt' lists of {m} numbers or null"
    if not all(isinstance(f, dict) for f in obj["fits"]):
        return "'fits' must be a list of objects"
    return None


def pack_array(values: Any, dtype: str) -> str:
    """A numeric vector as base64 of its little-endian bytes (`dtype` like "<f8", "<u4"): per-user
    scores take about a third of the space of a JSON list and round-trip exactly."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def unpack_array(text: str, dtype: str) -> np.ndarray:
    """The inverse of `pack_array`."""
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def users_digest(user_ids: Any) -> str:
    """SHA-256 hex of user ids as int64 little-endian: per-user score vectors of two result files
    are paired only when their digests are equal."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(user_ids, dtype="<i8").tobytes()).hexdigest()


def pack_per_user(metric: str, user_ids: Any, counts: Any, final: Any, diag: Any = None) -> dict:
    """One task's entry of `result["per_user"]`: the metric, the users' digest, their test pair
    counts (uint32) and per-user metric sums after the last task (`final`) and right after the
    task itself (`diag`, None for joint methods), float64; arrays as `pack_array` text."""
    n = len(user_ids)
    if any(len(a) != n for a in (counts, final, *([] if diag is None else [diag]))):
        raise ValueError("per-user arrays must all have one entry per test user")
    out = {"metric": metric, "users": users_digest(user_ids), "counts": pack_array(counts, "<u4"),
           "final": pack_array(final, "<f8")}
    if diag is not None:
        out["diag"] = pack_array(diag, "<f8")
    return out


SEALED_MAGIC = b"CURB-SEALED 1\n"


def save_sealed(path: Path, obj: Any, meta: dict) -> None:
    """Atomically write `obj` (torch-serialised) behind the JSON header `meta`, sealed by SHA-256."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    body = (canonical(meta) + "\n").encode() + buf.getvalue()
    atomic_write_bytes(Path(path), SEALED_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def _split_sealed(path: Path, data: bytes) -> tuple[bytes, bytes]:
    """(digest, body) of a sealed file's bytes, or ResultError when it is not one."""
    if not data.startswith(SEALED_MAGIC):
        raise ResultError(f"{path}: not a curb sealed file (bad header)")
    digest, sep, body = data[len(SEALED_MAGIC):].partition(b"\n")
    if not sep or len(digest) != 64:
        raise ResultError(f"{path}: truncated sealed file")
    return digest, body


def read_sealed_meta(path: Path) -> dict:
    """The JSON header of a sealed file, read without verifying the payload (for listings)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SEALED_MAGIC) + 65 + (1 << 16))
    except OSError as e:
        raise ResultError(f"{path}: unreadable ({e})") from None
    _, body = _split_sealed(path, head)
    line, sep, _ = body.partition(b"\n")
    try:
        meta = json.loads(line) if sep else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise ResultError(f"{path}: damaged sealed-file header")
    return meta


def load_sealed(path: Path) -> tuple[dict, Any]:
    """(meta, obj) of a sealed file; ResultError when it is missing, truncated or modified."""
    import torch

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ResultError(f"{path}: unreadable ({e})") from None
    digest, body = _split_sealed(path, data)
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise ResultError(f"{path}: checksum mismatch (file was modified or truncated)")
    line, _, payload = body.partition(b"\n")
    try:
        meta = json.loads(line)
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # sealed but unloadable: another torch/numpy, or unsafe content
        raise ResultError(f"{path}: cannot load sealed payload ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return meta, obj


def _numpy_globals() -> list:
    """What `weights_only` loading needs to rebuild numpy arrays, scalars and RNG states."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]
