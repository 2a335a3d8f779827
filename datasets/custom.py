"""`custom`: a stream described by a small manifest over per-task CSV files (no code needed).

File format (the reference code's, TERACON README):
  first task (next_item): one line per user, comma-separated item ids, oldest first; `0` is
      padding and may only appear as left padding.
  later tasks: `<input sequence>,,<target>[,<target>...]`, the user's sequence, the separator
      `,,`, then the targets (item ids or class labels, non-negative integers).
Manifest `stream.json` in the same folder (see docs/datasets.md):
  {"name": "...", "unseen": "error" | "pad", "padded": false, "max_len": null, "item_text": null,
   "tasks": [{"name": "T1", "kind": "next_item", "file": "t1.csv", "description": "..."}, ...]}
Optional item texts (`"item_text": "items.csv"`, for `backbone.item_init=text`): a UTF-8 CSV with
the header `item,text`, one line per item id of the task files, texts quoted when they hold commas.

Indexing follows the reference [R]: input item tokens are sorted numerically and numbered from
1 (padding `0` -> 0); each later task's targets get their own sorted dictionary 0..K-1.
Rows: every line of the first file is one user; a later line is matched to a user with the
identical (indexed) sequence, the k-th such line to the k-th such user, so classification
tasks keep one label per user; a later line with no match becomes a new user outside T1.
Items of later inputs that never occur in the first file are rejected (`unseen: "error"`, the
default, as the reference crashes on them) or mapped to padding (`unseen: "pad"`).
Time-aware streams: a later task may name `"new_items": "file"`, one item id per line, the items
that first appear at that task. Their ids follow the first file's (sorted within each task), every
task records the vocabulary of its period (`Task.vocab`), and a task's input holding an item
listed for a later task is an error.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from curb.data import DataFormatError, DataNotFoundError, ItemTexts, cached_build, check_splittable, register_dataset
from curb.streams import KINDS, Targets, Task, TaskStream

VERSION = "1"
MANIFEST = "stream.json"
# Longest input sequence curb pads users to: every user's row is as wide as the longest line (or
# `max_len`), so one overlong line would multiply the memory of the whole stream (a 300,000-item
# line padded 20 GB). 1,024 is ten times TTL's 100; set `max_len` to keep the last items of longer ones.
MAX_LEN = 1024
UNSEEN = ("error", "pad")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


# ------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    file: str
    description: str = ""
    new_items: str | None = None  # time-aware streams: a file of the item ids that first appear at this task


@dataclass(frozen=True)
class Manifest:
    """What a stream folder holds: tasks in order (the first is next_item) and loading options."""

    tasks: tuple[TaskSpec, ...]
    name: str = "custom"
    unseen: str = "error"  # a later task's input item absent from the first file: "error" or "pad"
    padded: bool = False  # every line must have the same number of tokens (reference files)
    max_len: int | None = None  # keep the last max_len items of every sequence (None: longest)
    item_text: str | None = None  # CSV `item,text` for backbone.item_init=text (does not change the stream)

    def options(self) -> dict:
        new = {s.name: s.new_items for s in self.tasks if s.new_items}
        return {"unseen": self.unseen, "padded": self.padded, "max_len": self.max_len,
                **({"new_items": new} if new else {})}


_OPTION_KEYS = ("name", "unseen", "padded", "max_len", "item_text")


def _relative(v: object) -> bool:
    return isinstance(v, str) and bool(v) and not Path(v).is_absolute() and ".." not in Path(v).parts


def parse_options(obj: dict, where: Path | str, base: Manifest) -> Manifest:
    """Apply the top-level option keys of a manifest object to `base`, validating each."""
    changes = {}
    for key in _OPTION_KEYS:
        if key not in obj:
            continue
        v = obj[key]
        ok = {"name": isinstance(v, str) and bool(_NAME.fullmatch(v)), "unseen": v in UNSEEN,
              "padded": isinstance(v, bool),
              "max_len": v is None or (isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= MAX_LEN),
              "item_text": v is None or _relative(v)}[key]
        if not ok:
            want = {"name": f"a name matching {_NAME.pattern}", "unseen": f"one of {list(UNSEEN)}",
                    "padded": "true or false", "max_len": f"an integer 2..{MAX_LEN} or null",
                    "item_text": "a path relative to the manifest, or null"}[key]
            raise DataFormatError(where, None, f"manifest key {key!r} must be {want}, got {v!r}")
        changes[key] = v
    return replace(base, **changes)


def read_json(path: Path) -> object:
    """A manifest's JSON; invalid JSON or text that is not UTF-8 is a DataFormatError naming the line."""
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataFormatError(path, data.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg}") from None


def read_manifest(path: Path) -> Manifest:
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise DataFormatError(path, None, "the manifest must be a JSON object")
    unknown = sorted(set(obj) - set(_OPTION_KEYS) - {"tasks"})
    if unknown:
        raise DataFormatError(path, None, f"unknown manifest keys {unknown}; valid: {['tasks', *_OPTION_KEYS]}")
    tasks = obj.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise DataFormatError(path, None, "'tasks' must be a non-empty list of {name, kind, file[, description]}")
    valid = {f.name for f in fields(TaskSpec)}
    specs = []
    for k, t in enumerate(tasks):
        where = f"tasks[{k}]"
        if not isinstance(t, dict) or not {"name", "kind", "file"} <= set(t) or set(t) - valid:
            raise DataFormatError(path, None, f"{where} must have the keys name, kind, file (optional: description, "
                                              f"new_items), got {t!r}")
        if not isinstance(t["name"], str) or not _NAME.fullmatch(t["name"]):
            raise DataFormatError(path, None, f"{where}: task name {t['name']!r} must match {_NAME.pattern}")
        if t["kind"] not in KINDS:
            raise DataFormatError(path, None, f"{where}: kind {t['kind']!r} is not one of {list(KINDS)}")
        if (k == 0) != (t["kind"] == "next_item"):
            raise DataFormatError(path, None, f"{where}: the first task, and only the first, must be of kind "
                                              f"next_item (got {t['kind']!r})")
        if not _relative(t["file"]):
            raise DataFormatError(path, None, f"{where}: file {t['file']!r} must be a path relative to the manifest")
        new = t.get("new_items")
        if new is not None and (k == 0 or not _relative(new)):
            raise DataFormatError(path, None, f"{where}: new_items must be a path relative to the manifest, on a task "
                                              f"after the first (the first task's items are those of its file); got {new!r}")
        specs.append(TaskSpec(t["name"], t["kind"], t["file"], str(t.get("description", "")), new))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataFormatError(path, None, f"duplicate task names {names}")
    return parse_options(obj, path, Manifest(tuple(specs), name=path.parent.name if _NAME.fullmatch(
        path.parent.name) else "custom"))


# ------------------------------------------------------------------------------- token files
@dataclass
class Parsed:
    """One file's tokens: per line, the input sequence and (later tasks) the targets."""

    path: Path
    seq: np.ndarray  # all input tokens, line after line
    seq_len: np.ndarray  # tokens per line
    tgt: np.ndarray  # all target tokens, line after line (none for the next-item file)
    tgt_len: np.ndarray  # targets per line

    def line_of_token(self, k: int) -> int:
        return int(np.searchsorted(np.cumsum(self.seq_len), k, side="right")) + 1


def _line_text(data: bytes, starts: np.ndarray, ends: np.ndarray, i: int) -> str:
    return data[starts[i]:ends[i]].decode("latin-1")[:80]


def _explain(path: Path, text: str, lineno: int, with_targets: bool) -> DataFormatError:
    """The precise problem of one malformed line."""
    if not text:
        return DataFormatError(path, lineno, "empty line (every line must hold a non-empty sequence)")
    for sep in ("\t", ";", " ", "|"):
        if sep in text:
            return DataFormatError(path, lineno, f"wrong separator {sep!r}: fields are separated by ',' "
                                                 f"(and ',,' before the targets) in {text!r}")
    if with_targets and ",," not in text:
        return DataFormatError(path, lineno, f"no ',,' between the input sequence and the targets (truncated "
                                             f"line?) in {text!r}")
    if with_targets and (text.count(",,") > 1 or ",,," in text):
        return DataFormatError(path, lineno, f"more than one ',,' or an empty field in {text!r}")
    if with_targets and text.startswith(","):
        return DataFormatError(path, lineno, f"no input sequence before ',,' in {text!r}")
    if with_targets and text.endswith(",,"):
        return DataFormatError(path, lineno, f"no targets after ',,' (truncated line?) in {text!r}")
    if not with_targets and ",," in text:
        return DataFormatError(path, lineno, f"empty field (',,') in a next-item file, which has no targets: {text!r}")
    for tok in re.split(",,?", text):
        if not tok.isdigit():
            return DataFormatError(path, lineno, f"bad token {tok!r}: ids must be non-negative integers "
                                                 f"(in {text!r})")
    return DataFormatError(path, lineno, f"malformed line {text!r}")


def read_token_file(path: Path, with_targets: bool) -> Parsed:
    """Parse and validate one task file, vectorised over the whole byte buffer."""
    if not path.is_file():
        raise DataNotFoundError(f"task file {path} is missing")
    data = path.read_bytes()
    if not data.strip():
        raise DataFormatError(path, None, "file is empty")
    data = data.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl[:-1] + 1])
    allowed = np.zeros(256, bool)
    allowed[[*range(48, 58), 44, 10]] = True  # digits, ',' and newline
    comma = buf == 44
    dd = np.flatnonzero(comma[:-1] & comma[1:])  # ',,' pairs (start positions)
    per_line = np.bincount(np.searchsorted(nl, dd), minlength=len(nl))
    # 0-based index of the first line with a bad byte, an empty line, an edge comma or a wrong ',,'.
    bad = np.flatnonzero(~allowed[buf])
    bad_lines = [int(np.searchsorted(nl, bad[0]))] if len(bad) else []
    bad_lines += [int(a[0]) for a in (np.flatnonzero(starts == nl),
                                      np.flatnonzero(comma[starts] | comma[np.maximum(nl - 1, 0)]),
                                      np.flatnonzero(per_line != (1 if with_targets else 0))) if len(a)]
    if bad_lines:
        i = min(bad_lines)
        raise _explain(path, _line_text(data, starts, nl, i), i + 1, with_targets)

    # Tokens per line from comma counts per segment ([line start, ',,') and [',,', next line) with targets).
    bounds = np.column_stack([starts, dd]).ravel() if with_targets else starts
    seg = np.add.reduceat(comma.view(np.uint8), bounds, dtype=np.int64)
    src_len = (seg[0::2] if with_targets else seg) + 1
    tgt_len = seg[1::2] - 1 if with_targets else np.zeros(len(nl), np.int64)  # ',,' holds 2 of the commas
    tokens = np.fromstring(data.replace(b",,", b",").replace(b"\n", b","), dtype=np.int64, sep=",")
    ntok = src_len + tgt_len
    if len(tokens) != ntok.sum():  # cannot happen after the checks above; never parse silently short
        raise DataFormatError(path, None, "could not parse every token")
    line_start = np.concatenate([[0], np.cumsum(ntok)[:-1]])
    huge = np.flatnonzero(tokens == np.iinfo(np.int64).max)  # the parser saturates ids of 19+ digits
    if len(huge):
        i = int(np.searchsorted(line_start, huge[0], side="right")) - 1
        raise DataFormatError(path, i + 1, f"id too large (ids must be below 2**63 - 1) in "
                                           f"{_line_text(data, starts, nl, i)!r}")
    is_src = np.ones(len(tokens), bool)
    is_src[np.repeat(line_start + src_len, tgt_len) + _ranges(tgt_len)] = False
    seq = tokens[is_src]
    # Padding 0 may only lead a sequence: a 0 right after an item is an error, an all-0 line is empty.
    seq_start = np.concatenate([[0], np.cumsum(src_len)[:-1]])
    after_item = np.concatenate([[False], (seq[1:] == 0) & (seq[:-1] != 0)])
    after_item[seq_start] = False
    if after_item.any():
        i = int(np.searchsorted(seq_start, np.flatnonzero(after_item)[0], side="right")) - 1
        raise DataFormatError(path, i + 1, "padding 0 inside a sequence: 0 is reserved for left padding "
                                           f"(in {_line_text(data, starts, nl, i)!r})")
    last = seq[seq_start + src_len - 1]
    if (last == 0).any():
        i = int(np.flatnonzero(last == 0)[0])
        raise DataFormatError(path, i + 1, "empty sequence: the line holds only padding 0")
    return Parsed(path, seq, src_len, tokens[~is_src], tgt_len)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [0..c0-1, 0..c1-1, ...]."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.arange(counts.sum()) - np.repeat(starts, counts)


def _pad(p: Parsed, width: int) -> np.ndarray:
    """Left-pad (or keep the last `width` tokens of) every line of `p`."""
    n = len(p.seq_len)
    pos = _ranges(p.seq_len) - p.seq_len.repeat(p.seq_len) + width  # column of each token
    keep = pos >= 0
    out = np.zeros((n, width), dtype=np.int64)
    out[np.repeat(np.arange(n), p.seq_len)[keep], pos[keep]] = p.seq[keep]
    return out


def _dense(vmax: int, n: int) -> bool:
    """Index through a direct table when ids are compact enough for it to be small."""
    return vmax < max(1 << 22, 8 * n)


def _sorted_unique(tokens: np.ndarray) -> np.ndarray:
    if len(tokens) and _dense(int(tokens.max()), len(tokens)):
        present = np.zeros(int(tokens.max()) + 1, bool)
        present[tokens] = True
        return np.flatnonzero(present)
    return np.unique(tokens)


def _lookup(vocab: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Position of each token in the sorted `vocab`, -1 where absent."""
    if len(vocab) and _dense(int(vocab[-1]), len(vocab)):
        table = np.full(int(vocab[-1]) + 2, -1, np.int64)
        table[vocab] = np.arange(len(vocab))
        return table[np.minimum(tokens, len(table) - 1)]
    pos = np.clip(np.searchsorted(vocab, tokens), 0, max(len(vocab) - 1, 0))
    return np.where(vocab[pos] == tokens, pos, -1) if len(vocab) else np.full(len(tokens), -1)


def _occurrence(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements have the same key (0 for the first)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    new = np.concatenate([[True], sk[1:] != sk[:-1]])
    start = np.maximum.accumulate(np.where(new, np.arange(len(sk)), 0))
    occ = np.empty(len(keys), np.int64)
    occ[order] = np.arange(len(sk)) - start
    return occ


_CHUNK = 1 << 16  # rows per step when hashing or comparing sequences (bounds temporary memory)


def _row_keys(a: np.ndarray, exact: bool) -> np.ndarray:
    """A key per row: a 64-bit multiplicative hash (fast), or the row's bytes (`exact`)."""
    if exact:
        return np.ascontiguousarray(a).view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    mult = np.random.default_rng(a.shape[1]).integers(1, 1 << 62, size=a.shape[1], dtype=np.uint64) * 2 + 1
    out = np.empty(len(a), np.uint64)
    for lo in range(0, len(a), _CHUNK):
        out[lo:lo + _CHUNK] = (a[lo:lo + _CHUNK].astype(np.uint64) * mult).sum(axis=1)  # wraps mod 2**64
    return out


def _match_rows(pool: np.ndarray, rows: np.ndarray, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row of `pool` for each row of `rows` (identical sequence, k-th occurrence to k-th), or -1.

    Rows are matched by hash and every match is then compared in full; a hash collision (never
    seen in practice) falls back to matching on the rows' bytes.
    """
    _, key = np.unique(np.concatenate([_row_keys(pool, exact), _row_keys(rows, exact)]), return_inverse=True)
    key = key.ravel().astype(np.int64)
    occ = np.concatenate([_occurrence(key[:len(pool)]), _occurrence(key[len(pool):])])
    code = key * (occ.max() + 1) + occ
    pc, rc = code[:len(pool)], code[len(pool):]
    order = np.argsort(pc)
    idx = np.clip(np.searchsorted(pc[order], rc), 0, max(len(pc) - 1, 0))
    found = pc[order][idx] == rc
    row = np.where(found, order[idx], -1)
    hit = np.flatnonzero(found)
    same = all((pool[row[hit[lo:lo + _CHUNK]]] == rows[hit[lo:lo + _CHUNK]]).all() for lo in range(0, len(hit), _CHUNK))
    return (row, found) if same or exact else _match_rows(pool, rows, exact=True)


# ------------------------------------------------------------------------------- the stream
def refuse_extra_lines(p: Parsed, users: np.ndarray, x: np.ndarray, new: np.ndarray) -> None:
    """Refuse the later-task lines `new` (matching no user) that would be phantom users: a line whose
    sequence is a known user's, when the earlier lines of the file already matched every such user
    (each user has one line per task), and a line repeating an earlier new user's line exactly. Both
    are what a duplicated line looks like; as users of their own they could land on both sides of a
    split with the same sequence and labels."""
    if not len(new):
        return
    _, taken = _match_rows(users, x[new])
    if taken.any():
        k = int(new[np.flatnonzero(taken)[0]])
        raise DataFormatError(p.path, k + 1, "its sequence is that of a user whom an earlier line of this file already "
                                             "matched (a user has one line per task): a duplicated line?")
    start = np.concatenate([[0], np.cumsum(p.tgt_len)[:-1]])
    seen: dict[tuple[bytes, bytes], int] = {}
    for k in new.tolist():
        key = (x[k].tobytes(), p.tgt[start[k]:start[k] + p.tgt_len[k]].tobytes())
        if key in seen:
            raise DataFormatError(p.path, k + 1, f"repeats line {seen[key] + 1} (same sequence, same targets, no "
                                                 "first-task user): a duplicated line?")
        seen[key] = k


def build(folder: Path, manifest: Manifest) -> TaskStream:
    files = {s.name: folder / s.file for s in manifest.tasks}
    first = read_token_file(files[manifest.tasks[0].name], with_targets=False)

    def checked(p: Parsed) -> Parsed:
        bad = np.flatnonzero(p.seq_len != first.seq_len[0]) if manifest.padded else []
        if len(bad):
            i = int(bad[0])
            raise DataFormatError(p.path, i + 1, f"truncated or overlong line: {p.seq_len[i]} input tokens, "
                                                 f"expected {first.seq_len[0]} like line 1 of {first.path.name} "
                                                 "(padded files hold fixed-length, left-padded sequences)")
        longest = int(np.argmax(p.seq_len))
        if manifest.max_len is None and p.seq_len[longest] > MAX_LEN:
            raise DataFormatError(p.path, longest + 1, f"{p.seq_len[longest]:,} input tokens, more than the "
                                  f"{MAX_LEN:,} every user could be padded to; set \"max_len\" (at most {MAX_LEN}) "
                                  f"in {MANIFEST} to keep each sequence's last items")
        return p

    # Later files are parsed one at a time (memory) unless the width needs the longest of them all.
    later = (checked(read_token_file(files[s.name], with_targets=True)) for s in manifest.tasks[1:])
    if manifest.padded or manifest.max_len:
        width = manifest.max_len or int(first.seq_len[0])
    else:
        later = list(later)
        width = int(max([first.seq_len.max(), *(p.seq_len.max() for p in later)]))
    checked(first)
    if width < 2:
        raise DataFormatError(first.path, None, "sequences must be at least 2 items long for next-item training")
    # Item tokens in id order: the first file's, sorted numerically (ids 1..n), then each task's listed
    # new items, sorted (a time-aware stream); `sizes[j]` is the vocabulary as of task j.
    tokens, sizes = _item_order(folder, manifest, _sorted_unique(first.seq[first.seq != 0]))
    order = np.argsort(tokens, kind="stable")
    time_aware = any(s.new_items for s in manifest.tasks)

    def index(p: Parsed, spec: TaskSpec) -> tuple[np.ndarray, int]:
        """Item ids of `p`'s inputs (left-padded to `width`) and how many unseen items became padding."""
        pos = _lookup(tokens[order], p.seq)
        ids = np.where(pos >= 0, order[np.maximum(pos, 0)] + 1, 0)  # 0 for padding and for unseen items
        j = manifest.tasks.index(spec)
        late = ids >= sizes[j]
        if late.any():
            k = int(np.flatnonzero(late)[0])
            at = next(s.name for s, n in zip(manifest.tasks, sizes) if ids[k] < n)
            raise DataFormatError(p.path, p.line_of_token(k), f"item {p.seq[k]} in the input of task {spec.name} is "
                                  f"listed as new only at the later task {at}: a task's input holds items of its own "
                                  "period or earlier")
        unknown = (ids == 0) & (p.seq != 0)
        if unknown.any() and manifest.unseen == "error":
            k = int(np.flatnonzero(unknown)[0])
            raise DataFormatError(p.path, p.line_of_token(k), f"unknown item {p.seq[k]} in the input of task "
                                  f"{spec.name}: it never occurs in {first.path.name} (set \"unseen\": \"pad\" in "
                                  f"{MANIFEST} to map such items to padding)")
        return _pad(replace(p, seq=ids), width), int(unknown.sum())

    seqs, _ = index(first, manifest.tasks[0])
    n1 = len(seqs)
    tasks = [Task(manifest.tasks[0].name, "next_item", sizes[0], Targets(np.arange(n1), np.arange(n1 + 1),
                  seqs[:, -1]), description=manifest.tasks[0].description or "next item",
                  vocab=sizes[0] if time_aware else None)]
    unseen, added = {}, {}
    for spec, p in zip(manifest.tasks[1:], later):
        x, unseen[spec.name] = index(p, spec)
        row, found = _match_rows(seqs, x)
        new = np.flatnonzero(~found)
        refuse_extra_lines(p, seqs, x, new)
        row[new] = len(seqs) + np.arange(len(new))
        seqs = np.vstack([seqs, x[new]])
        added[spec.name] = len(new)
        if spec.kind == "classify" and (p.tgt_len != 1).any():
            i = int(np.flatnonzero(p.tgt_len != 1)[0])
            raise DataFormatError(p.path, i + 1, f"task {spec.name} is a classify task: each line needs exactly one "
                                                 f"target after ',,', found {p.tgt_len[i]}")
        labels_raw = _sorted_unique(p.tgt)  # the task's own dictionary, sorted numerically
        tg = Targets.from_pairs(np.repeat(row, p.tgt_len), _lookup(labels_raw, p.tgt))
        tasks.append(Task(spec.name, spec.kind, len(labels_raw), tg, description=spec.description,
                          label_names=tuple(map(str, labels_raw)) if spec.kind == "classify" else None,
                          vocab=sizes[len(tasks)] if time_aware else None))
    meta = {"format": "curb-custom", "files": {s.name: s.file for s in manifest.tasks}, "options": manifest.options(),
            "users_outside_T1": added, **({"unseen_items_padded": unseen} if manifest.unseen == "pad" else {})}
    if time_aware:
        meta["new_items"] = {s.name: n - (sizes[k - 1] if k else 1) for k, (s, n) in enumerate(zip(manifest.tasks, sizes))}
    stream = TaskStream(manifest.name, seqs, sizes[-1], tuple(tasks), meta=meta,
                        item_ids=np.concatenate([[0], tokens]).astype(np.int64))
    check_splittable(stream, {k: str(v) for k, v in files.items()})
    return stream


def read_new_items(path: Path) -> np.ndarray:
    """A task's `new_items` file: one item id per line (a positive integer, as in the task files)."""
    if not path.is_file():
        raise DataNotFoundError(f"new-items file {path} is missing (named by \"new_items\" in {MANIFEST})")
    ids = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        tok = line.strip()
        if not tok:
            continue
        if not tok.isdigit() or int(tok) == 0:
            raise DataFormatError(path, lineno, f"item id {tok[:40]!r} must be a positive integer (0 is padding)")
        ids.append(int(tok))
    out = np.array(ids, dtype=np.int64)
    uniq, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        raise DataFormatError(path, None, f"item {uniq[counts > 1][0]} listed twice")
    return out


def _item_order(folder: Path, manifest: Manifest, first: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Item tokens in id order (the first file's, then every task's new items, each block sorted) and
    the vocabulary size (padding included) as of each task."""
    blocks, sizes = [first], [len(first) + 1]
    for spec in manifest.tasks[1:]:
        new = np.sort(read_new_items(folder / spec.new_items)) if spec.new_items else np.zeros(0, np.int64)
        known = np.concatenate(blocks)
        again = new[np.isin(new, known)]
        if len(again):
            where = "the first file" if np.isin(again[0], first) else "an earlier task's new_items"
            raise DataFormatError(folder / spec.new_items, None, f"item {again[0]} is listed as new at task {spec.name}"
                                  f" but already occurs in {where}")
        blocks.append(new)
        sizes.append(sizes[-1] + len(new))
    return np.concatenate(blocks), sizes


def load(folder: Path, manifest: Manifest, manifest_path: Path | None, dataset: str) -> TaskStream:
    missing = [folder / s.file for s in manifest.tasks if not (folder / s.file).is_file()]
    if missing:
        raise DataNotFoundError("task files missing: " + ", ".join(map(str, missing)))
    sources = ([manifest_path] if manifest_path else []) + [folder / s.file for s in manifest.tasks]
    sources += [folder / s.new_items for s in manifest.tasks if s.new_items]
    return cached_build(dataset, list(dict.fromkeys(sources)), lambda: build(folder, manifest),
                        options=manifest.options())


# ------------------------------------------------------------------------------- item texts
ITEM_TEXT_HEADER = ("item", "text")


def read_item_texts(path: Path) -> ItemTexts:
    """Parse an `item,text` CSV strictly: every error names the file, the line and the problem."""
    if not path.is_file():
        raise DataNotFoundError(f"item-text file {path} is missing (named by \"item_text\" in {MANIFEST})")
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, path.read_bytes().count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
    if not raw.strip():
        raise DataFormatError(path, None, "file is empty")
    reader = csv.reader(raw.splitlines(keepends=True), strict=True)
    ids, texts, line_of = [], [], {}
    try:
        for row in reader:
            lineno = reader.line_num
            if lineno == 1:
                if tuple(row) != ITEM_TEXT_HEADER:
                    raise DataFormatError(path, 1, f"expected the header 'item,text', got {','.join(row)[:80]!r}")
                continue
            if len(row) != 2:
                raise DataFormatError(path, lineno, f"{len(row)} fields, expected 2 (item,text); quote a text holding "
                                                    f"commas: 12,\"Shoes, red\" (in {','.join(row)[:80]!r})")
            item, text = row[0].strip(), row[1].strip()
            if not re.fullmatch(r"[0-9]{1,18}", item) or int(item) == 0:
                raise DataFormatError(path, lineno, f"item id {item[:40]!r} must be a positive integer of at most 18 "
                                                    "digits (an item id of the task files; 0 is padding)")
            if not text:
                raise DataFormatError(path, lineno, f"empty text for item {item} (leave the item out instead: it "
                                                    "then keeps a random embedding)")
            if int(item) in line_of:
                raise DataFormatError(path, lineno, f"item {item} listed twice (first on line {line_of[int(item)]})")
            line_of[int(item)] = lineno
            ids.append(int(item))
            texts.append(text)
    except csv.Error as e:
        raise DataFormatError(path, reader.line_num, f"malformed CSV: {e}") from None
    if not ids:
        raise DataFormatError(path, None, "no item lines after the header")
    return ItemTexts(np.array(ids, dtype=np.int64), tuple(texts), path)


def _manifest_path(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DataNotFoundError(f"dataset `custom` reads a stream you describe: pass --data-dir DIR, a folder holding "
                                f"{MANIFEST} and the task files (format: docs/datasets.md, 'Custom streams')")
    path = Path(data_dir)
    mpath = path if path.suffix == ".json" else path / MANIFEST
    if not mpath.is_file():
        raise DataNotFoundError(f"no manifest {mpath}: a custom stream folder needs {MANIFEST} listing its tasks "
                                "(format: docs/datasets.md, 'Custom streams')")
    return mpath


def load_item_texts(data_dir: Path | None) -> ItemTexts:
    mpath = _manifest_path(data_dir)
    manifest = read_manifest(mpath)
    if manifest.item_text is None:
        raise DataNotFoundError(f"{mpath} names no item-text file, which backbone.item_init=text needs: add "
                                "\"item_text\": \"items.csv\", a CSV with the header item,text (docs/datasets.md, "
                                "'Custom streams')")
    return read_item_texts(mpath.parent / manifest.item_text)


@register_dataset("custom", f"your own stream: --data-dir DIR holding {MANIFEST} and per-task CSV files "
                  "(docs/datasets.md)", defaults={"preset": "small"}, version=VERSION, item_texts=load_item_texts)
def build_custom(data_dir: Path | None = None) -> TaskStream:
    mpath = _manifest_path(data_dir)
    return load(mpath.parent, read_manifest(mpath), mpath, "custom")
