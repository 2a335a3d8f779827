"""A page as data: headed parts holding paragraphs, tables, figures and code blocks.

Reports and leaderboards build a `Page`; this module renders it as markdown (README files) and
curb/site.py renders the same page as HTML, so the two always show the same content and a new
kind of section (a claims table, statistics) needs no change in either renderer.
Paragraphs and table cells are inline markdown: `code`, **bold**, *emphasis*, [text](link).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tables import Table


@dataclass(frozen=True)
class Figure:
    stem: str  # file stem in the page's figures folder (stem.png and stem.svg)
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = str | Table | Figure | Code


@dataclass
class Part:
    """A headed part; its heading level is its depth in the page."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    parts: list["Part"] = field(default_factory=list)

    def tables(self) -> list[Table]:
        return [b for b in self.blocks if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


@dataclass
class Page:
    title: str
    blocks: list[Block] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)


def paragraphs(text: str) -> list[str]:
    """A free text (e.g. a board description) as paragraphs: split at blank lines."""
    return [p.strip() for p in text.strip().split("\n\n") if p.strip()]


def block_markdown(block: Block, figures: str | None) -> str | None:
    """One block as markdown; a figure is left out when there is no figures folder (None)."""
    if isinstance(block, Table):
        return f"**{block.title}**\n\n{block.markdown()}" if block.title else block.markdown()
    if isinstance(block, Figure):
        return None if figures is None else f"![{block.caption}]({figures}/{block.stem}.png)\n\n*{block.caption}.*"
    if isinstance(block, Code):
        return f"```\n{block.text.strip()}\n```"
    return block


def markdown(page: Page, figures: str | None = "figures") -> str:
    """The page as markdown; figure links are `figures/<stem>.png` (None: no figures)."""
    out: list[str] = []

    def emit(title: str, blocks: list[Block], parts: list[Part], level: int) -> None:
        out.append(f"{'#' * level} {title}")
        out.extend(md for b in blocks if (md := block_markdown(b, figures)) is not None)
        for p in parts:
            emit(p.title, p.blocks, p.parts, level + 1)

    emit(page.title, page.blocks, page.parts, 1)
    return "\n\n".join(out) + "\n"
