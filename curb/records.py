"""The vocabulary of result records, shared by the code that writes them (runner, cold-start study)
and the code that only reads them (report, leaderboards, export, the Python API).

Readers must not import the runner (and with it torch): everything a reader needs to know about a
cell's spec (its order tag, which overrides are shared by a comparison and which are the method's
own variant) is derived here from the spec the result file records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

# Config sections every method of a comparison shares ("tuned": one tuned file for every method).
SHARED_SECTIONS = ("backbone", "train", "split", "tuned")
PAPER_METHODS = ("sinmo", "fineall", "peterrec", "mtl", "piggyback", "hat", "conure", "teracon")

# Config knobs added after result files existed, with the value those older files ran with: a
# reader comparing by such a knob (`curb compare --by`) files an older result under that value.
KNOBS_ADDED = {"backbone.readout": "last"}

COLD_START = "cold-start"  # the `kind` of a cold-start study result
COLD_START_GROUPS = ("all", "warm", "cold", "cold_natural", "cold_simulated")
COLD_START_METRICS = ("hr@1", "hr@5", "hr@10", "ndcg@10")

Overrides = tuple[tuple[str, str], ...]


def shared_part(overrides: Overrides) -> Overrides:
    """The overrides every method of a comparison shares (backbone., train., split., tuned.)."""
    return tuple((k, v) for k, v in overrides if k.split(".", 1)[0] in SHARED_SECTIONS)


class SpecNames:
    """Names derived from a spec's `order`, `noise` and `overrides` (sorted pairs): one definition
    for the runner's `CellSpec` and the readers' `RecordedSpec`."""

    order: str
    noise: int | None
    overrides: Overrides

    @property
    def order_tag(self) -> str:
        tag = self.order.replace(",", "-")
        return tag + (f"+noise{self.noise}" if self.noise is not None else "")

    @property
    def shared_overrides(self) -> Overrides:
        """Overrides every method of a comparison shares (backbone., train., split., tuned.)."""
        return shared_part(self.overrides)

    @property
    def method_overrides(self) -> Overrides:
        """Overrides of the method's own config (its variant, e.g. teracon.sampling=none)."""
        return tuple((k, v) for k, v in self.overrides if k.split(".", 1)[0] not in SHARED_SECTIONS)


@dataclass(frozen=True)
class RecordedSpec(SpecNames):
    """A continual cell's spec as its result file records it, with the hash the runner sealed."""

    method: str
    dataset: str
    order: str
    noise: int | None
    seed: int
    preset: str | None
    overrides: Overrides
    hash: str

    @staticmethod
    def of(result: dict) -> "RecordedSpec":
        s = result["spec"]
        return RecordedSpec(s["method"], s["dataset"], s["order"], s["noise"], s["seed"], s["preset"],
                            tuple(sorted(s["overrides"].items())), result["spec_hash"])


def is_cold_start(result: dict) -> bool:
    return result.get("kind") == COLD_START


def cold_start_rows(results: Iterable[dict]) -> list[dict]:
    """One row per (result, user group): dataset, init, after, view, source, seed, group,
    n_users and every metric. Aggregate over `seed` for the table (mean ± std)."""
    rows = []
    for r in results:
        if not is_cold_start(r):
            continue
        s = r["spec"]
        for g in COLD_START_GROUPS:
            m = r["groups"].get(g)
            if m is None:
                continue
            rows.append({"dataset": s["dataset"], "holdout": s["holdout"], "init": s["init"], "after": s["after"],
                         "view": s["view"], "source": r["source"], "preset": s["preset"], "seed": s["seed"],
                         "ncf": ",".join(f"{k}={v}" for k, v in sorted(s["ncf"].items())),
                         "eval_negatives": r["config"]["ncf"]["eval_negatives"],
                         "cold_threshold": r["config"]["ncf"]["cold_threshold"],
                         "group": g, "n_users": m["n_users"], **{k: m[k] for k in COLD_START_METRICS}})
    return rows
