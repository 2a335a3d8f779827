"""Result tables: cells are fixed strings or one value per seed (rendered mean ± sample std), with
the best mean per column in bold; rendered as markdown (reports, boards) and LaTeX (papers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from tabulate import tabulate

Value = float | None
Cell = str | list[Value]  # a fixed string, or one value per seed (rendered mean ± std)


def finite(values: Iterable[Value]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_std(values: Iterable[Value]) -> tuple[float, float] | None:
    """(mean, sample std; 0 for one value) of the finite values, or None."""
    vals = finite(values)
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def fmt_stat(values: Sequence[Value], digits: int = 4) -> str:
    ms = mean_std(values)
    if ms is None:
        return "-"
    n = len(finite(values))
    return f"{ms[0]:.{digits}f}" if n == 1 else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


@dataclass
class Table:
    """A result table: row cells are strings or per-seed value lists; `best` marks, per column,
    whether the highest mean is bolded ("max") or nothing is (None). `digits` per column."""

    name: str  # file stem
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    best: list[str | None] = field(default_factory=list)
    digits: list[int] = field(default_factory=list)
    note: str = ""
    key: int = 0  # the column that names a row (a row header in HTML)
    # text appended to a cell, by (row, column), outside its bold (e.g. a CI and a significance mark)
    annotations: dict[tuple[int, int], str] = field(default_factory=dict)

    def _best_rows(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for c, rule in enumerate(self.best):
            if rule != "max":
                continue
            means = {r: ms[0] for r, row in enumerate(self.rows)
                     if isinstance(row[c], list) and (ms := mean_std(row[c])) is not None}
            if len(means) > 1:
                top = max(means.values())
                out[c] = {r for r, v in means.items() if round(v, self._digits(c)) == round(top, self._digits(c))}
        return out

    def _digits(self, c: int) -> int:
        return self.digits[c] if c < len(self.digits) else 4

    def cells(self, bold: Callable[[str], str], text: Callable[[str], str] = str) -> list[list[str]]:
        """Every cell as text (`text` applied to it, e.g. escaping), the best ones through `bold`,
        then its annotation (through `text`, not bold: the bold says only which mean is highest)."""
        best = self._best_rows()
        return [[(bold(s) if r in best.get(c, ()) else s) + text(self.annotations.get((r, c), ""))
                 for c, cell in enumerate(row)
                 for s in [text(cell if isinstance(cell, str) else fmt_stat(cell, self._digits(c)))]]
                for r, row in enumerate(self.rows)]

    def markdown(self) -> str:
        body = tabulate(self.cells(lambda s: f"**{s}**", lambda s: s.replace("|", "\\|")),  # a bar would end the cell
                        headers=self.headers, tablefmt="github",
                        disable_numparse=True)
        return body + (f"\n\n{self.note}" if self.note else "")

    def latex(self) -> str:
        """A booktabs tabular (`\\usepackage{booktabs}`): best means in bold, columns of per-seed
        values right-aligned, the title as a comment above it."""
        rows = self.cells(lambda s: f"\\textbf{{{s}}}", _latex_escape)
        align = "".join("r" if any(isinstance(row[c], list) for row in self.rows) else "l"
                        for c in range(len(self.headers)))
        return "\n".join([f"% {self.title} (needs \\usepackage{{booktabs}})", f"\\begin{{tabular}}{{{align}}}",
                          r"\toprule", " & ".join(_latex_escape(h) for h in self.headers) + r" \\", r"\midrule",
                          *[" & ".join(row) + r" \\" for row in rows], r"\bottomrule", r"\end{tabular}"])


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "$": r"\$", "±": r"$\pm$", "ρ": r"$\rho$", "σ": r"$\sigma$", "≥": r"$\geq$", "≤": r"$\leq$",
          "≈": r"$\approx$", "▲": r"$\bigtriangleup$", "▽": r"$\bigtriangledown$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)
