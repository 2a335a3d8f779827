"""Exclusive file locks (POSIX `fcntl.flock`) that say who holds them.

Why flock and not a pid file or the `filelock` package: the kernel drops a flock when its holder
dies (kill -9, OOM, power loss), so a lock can never go stale and nothing has to guess whether a
recorded pid is still alive; on NFS (v4, or v3 with lockd) Linux maps flock onto byte-range locks
that every client sees. `filelock` is built on the same call but keeps no record of the holder,
which the second runner of a folder must name. POSIX only (Linux, macOS).

The holder writes its `info` (pid, host, start time, command) into the lock file once it has the
lock and empties the file before releasing it, so a process that finds the lock taken can report
who has it. Locks are re-entrant within a process (a grid run inside `curb reproduce`, which holds
the same folder's lock for its whole run); they exclude other processes, not other threads.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from .errors import CurbError

_held: dict[Path, int] = {}  # lock path -> nesting depth in this process


class LockBusy(CurbError):
    """Another process holds the lock; `holder` is what it recorded (empty when not yet written)."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {describe(holder)}")


def describe(holder: dict) -> str:
    """A holder record as text: 'pid 4711 on node3 since 2026-01-02T10:00:00+00:00 (curb run ...)'."""
    if not holder:
        return "another process"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


class FileLock:
    """An exclusive lock on `path` (created if missing; the file itself is never removed, since
    removing a lock file while another process waits on it would let two processes hold it)."""

    def __init__(self, path: Path, info: dict | None = None):
        self.path, self.info = Path(path).resolve(), info or {}
        self._fd: int | None = None

    def acquire(self, wait: bool = True) -> None:
        """Take the lock; blocks until free, or with `wait=False` raises `LockBusy` at once."""
        if self.path in _held:
            _held[self.path] += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _wait_for_holder(fd)
            os.close(fd)
            raise LockBusy(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info, sort_keys=True).encode(), 0)
        self._fd = fd
        _held[self.path] = 1

    def release(self) -> None:
        depth = _held.get(self.path, 0)
        if depth > 1:
            _held[self.path] = depth - 1
            return
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a process finding the file empty knows no details
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        _held.pop(self.path, None)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _wait_for_holder(fd: int, patience: float = 2.0) -> dict:
    """The holder's record, waiting up to `patience` seconds for it: a holder writes it just after
    taking the lock, so a process that loses a race by microseconds would otherwise find the file
    still empty and could only say "another process"."""
    deadline = time.monotonic() + patience
    while not (holder := _read_holder(fd)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return holder


def _read_holder(fd: int) -> dict:
    try:
        obj = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}

