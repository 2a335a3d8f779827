"""Result files: one JSON per cell, written atomically and sealed with a checksum.

A result is only trusted when it parses, has the current schema and its checksum matches; a
damaged file is reported and recomputed, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

SCHEMA = 1


class ResultError(ValueError):
    """A result or checkpoint file is damaged or from another schema."""


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
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_result(path: Path, result: dict) -> None:
    result = {**result, "schema": SCHEMA}
    result["checksum"] = checksum(result)
    atomic_write_bytes(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())


def load_result(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: unreadable result file ({e})") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise ResultError(f"{path}: not a curb result of schema {SCHEMA}")
    if obj.get("checksum") != checksum(obj):
        raise ResultError(f"{path}: checksum mismatch (file was modified or truncated)")
    return obj


def iter_results(root: Path) -> Iterator[tuple[Path, dict | ResultError]]:
    """Every result JSON under `root` (sorted), or the error that made it untrustworthy."""
    for p in sorted(Path(root).rglob("*.json")):
        if p.name.startswith(".") or "cache" in p.parts:
            continue
        try:
            yield p, load_result(p)
        except ResultError as e:
            yield p, e
