"""The static leaderboard site: a `Page` (curb/document.py) rendered as one self-contained HTML file.

The site is fully offline: no CDN, no external fonts, one local stylesheet and one small script
(curb/assets/), so it works from `file://`. Tables are real `<table>` markup with a caption,
`<th scope>` headers and row headers; every header is a button that sorts its column and sets
`aria-sort`. A cell's `data-sort` holds its number (the mean over seeds of a per-seed cell), so
sorting never parses formatted text. Nothing is dated: a rebuild from the same results gives the
same bytes, which is what `curb leaderboard check` compares.
"""

from __future__ import annotations

import re
from html import escape
from importlib import resources

from .document import Block, Code, Figure, Page, Part
from .tables import Cell, Table, mean_std

ASSETS = ("site.css", "sort.js")
_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*([^*\s][^*]*?)\*|\[([^\]]+)\]\(([^)\s]+)\)")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?: ± [\d.e+-]+)?(?: \([+-]?[\d.]+%\))?")


def asset(name: str) -> str:
    """The text of a site asset (stylesheet or script) shipped with curb."""
    return resources.files("curb").joinpath("assets", name).read_text()


def inline_html(text: str) -> str:
    """Inline markdown (`code`, **bold**, *emphasis*, [text](link)) as escaped HTML."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos:m.start()], quote=False))
        code, strong, em, label, href = m.groups()
        if code is not None:
            out.append(f"<code>{escape(code, quote=False)}</code>")
        elif strong is not None:
            out.append(f"<strong>{inline_html(strong)}</strong>")
        elif em is not None:
            out.append(f"<em>{inline_html(em)}</em>")
        else:
            out.append(f'<a href="{escape(href)}">{inline_html(label)}</a>')
        pos = m.end()
    return "".join(out) + escape(text[pos:], quote=False)


def sort_value(cell: Cell) -> float | str | None:
    """A cell's sort key: the mean of a per-seed cell, the leading number of a formatted one
    ("0.0195 ± 0.0005 (+1.2%)", "3"), None for no value ("-"), else its text."""
    if isinstance(cell, list):
        ms = mean_std(cell)
        return None if ms is None else ms[0]
    text = cell.strip()
    if text in ("", "-"):
        return None
    return float(text.split(" ")[0]) if _NUMBER.fullmatch(text) else text


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def table_html(t: Table, ident: str) -> str:
    """A sortable, captioned table inside a focusable scroll region (wide tables scroll, not the page)."""
    shown = t.cells(lambda s: f"**{s}**")
    head = "".join(f'<th scope="col"><button type="button">{inline_html(h)}</button></th>' for h in t.headers)
    body = []
    for raw, row in zip(t.rows, shown):
        cells = []
        for c, (value, text) in enumerate(zip(raw, row)):
            if c == t.key:
                cells.append(f'<th scope="row">{inline_html(text)}</th>')
                continue
            key = sort_value(value)
            attr = (' data-sort=""' if key is None else f' data-sort="{key:.12g}"' if isinstance(key, float)
                    else ' class="text"')
            cells.append(f"<td{attr}>{inline_html(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = f'\n<p class="note">{inline_html(t.note)}</p>' if t.note else ""
    return (f'<div class="scroll" role="region" aria-labelledby="{ident}-caption" tabindex="0">\n'
            f'<table class="sortable" id="{ident}">\n<caption id="{ident}-caption">{inline_html(t.title)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + f"\n</tbody>\n</table>\n</div>{note}")


def block_html(block: Block, ident: str, figures: str) -> str:
    if isinstance(block, Table):
        return table_html(block, ident)
    if isinstance(block, Figure):
        src = f"{figures}/{block.stem}"
        return (f'<figure>\n<a href="{escape(src)}.svg"><img src="{escape(src)}.png" alt="{escape(block.caption)}">'
                f"</a>\n<figcaption>{inline_html(block.caption)}.</figcaption>\n</figure>")
    if isinstance(block, Code):
        return f"<pre><code>{escape(block.text.strip(), quote=False)}</code></pre>"
    return f"<p>{inline_html(block)}</p>"


def page_html(page: Page, *, figures: str, links: list[tuple[str, str]], footer: str) -> str:
    """The page as a complete HTML document; `figures`: the figures folder relative to the page,
    `links`: (href, text) for the site navigation, `footer`: inline markdown."""
    taken: set[str] = set()  # element ids: one per part and per table

    def blocks(bs: list[Block]) -> list[str]:
        return [block_html(b, _slug(f"table-{b.name}", taken) if isinstance(b, Table) else "", figures) for b in bs]

    def part(p: Part, level: int, ident: str) -> str:
        inner = [f'<h{level} id="{ident}">{inline_html(p.title)}</h{level}>', *blocks(p.blocks),
                 *[part(q, min(level + 1, 6), _slug(q.title, taken)) for q in p.parts]]
        return f'<section aria-labelledby="{ident}">\n' + "\n".join(inner) + "\n</section>"

    intro = blocks(page.blocks)
    idents = [_slug(p.title, taken) for p in page.parts]
    parts = [part(p, 2, ident) for p, ident in zip(page.parts, idents)]
    contents = ""
    if len(page.parts) > 1:
        items = "".join(f'<li><a href="#{i}">{inline_html(p.title)}</a></li>' for p, i in zip(page.parts, idents))
        contents = f'<nav class="contents" aria-label="Contents"><ul>{items}</ul></nav>\n'
    nav = " · ".join(f'<a href="{escape(href)}">{escape(text, quote=False)}</a>' for href, text in links)
    return ("<!doctype html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(page.title, quote=False)}</title>\n"
            '<link rel="icon" href="data:,">\n<link rel="stylesheet" href="site.css">\n'
            '<script src="sort.js" defer></script>\n</head>\n<body>\n'
            f'<header><nav aria-label="Site">{nav}</nav></header>\n<main>\n'
            f"<h1>{inline_html(page.title)}</h1>\n" + "".join(f"{b}\n" for b in intro) + contents
            + "\n".join(parts) + f"\n</main>\n<footer><p>{inline_html(footer)}</p></footer>\n</body>\n</html>\n")
