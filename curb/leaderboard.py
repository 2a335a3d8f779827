"""Leaderboards: versioned tables built from committed result files, and a check that they still are.

`leaderboards/boards.toml` names each board: its folder, version (e.g. `ml-v1`), the run folder
holding its result JSONs and the setting (dataset, preset, shared overrides) it ranks. `build`
writes `<board>/README.md` (ranked table, provenance of every row, exact config, every experiment
section whose cells exist, figures) and `<board>/results.csv` (one row per result file), an
index, and the static site `site/` (the same pages as HTML: curb/site.py). Each board is built
once as a `Page` (curb/document.py) and rendered both ways, so README and site never disagree.
`check` rebuilds the text files in memory and fails on any difference, so a published number can
only change together with the result files behind it; it also fails on a figure or site link that
leads to no file. Figures are drawn by `build` and only checked for presence: PNG/SVG bytes
depend on the matplotlib version.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .document import Block, Code, Page, Part, markdown, paragraphs
from .errors import CurbError
from .report import SECTIONS, build_sections
from .results import ResultError, iter_results
from .site import ASSETS, asset, page_html
from .resultsets import Setting, load_settings, mean_final, method_rank, spec_of, task_names, transfer_mean
from .paper import PAPER
from .sections import overall_table, paper_table
from .tables import Table, mean_std

BOARDS_FILE = Path("leaderboards") / "boards.toml"
_MARK = re.compile(r"(<!-- leaderboard:([\w-]+) -->)\n(?:.*?\n)?(<!-- /leaderboard -->)", re.S)
_HTML_LINK = re.compile(r'(?:src|href)="([^"#:]+)"')  # local links only (no scheme, no anchor)
_KEYS = {"title", "version", "results", "dataset", "preset", "overrides", "description", "command", "paper"}


class BoardsError(CurbError):
    """boards.toml, or a README embedding a board, is missing or malformed; says which file and key."""


@dataclass(frozen=True)
class Board:
    key: str  # folder under leaderboards/
    title: str
    version: str  # benchmark version: a change of data, protocol or config makes a new one
    results: Path  # run folder of the result JSONs (relative paths: to the boards file's folder)
    dataset: str
    preset: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    description: str = ""
    command: str = ""  # how the rows were produced
    paper: str | None = None  # key of the paper's published table to set beside the rows (curb.paper.PAPER)


def read_boards(path: Path) -> list[Board]:
    """The boards of a boards.toml; a bad entry names the file, board and key."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise BoardsError(f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise BoardsError(f"{path}: not valid TOML: {e}") from None
    boards = []
    for key, d in raw.items():
        if not isinstance(d, dict):
            raise BoardsError(f"{path}: [{key}] must be a table")
        unknown = set(d) - _KEYS
        missing = {"title", "version", "results", "dataset"} - set(d)
        if unknown or missing:
            raise BoardsError(f"{path}: [{key}] " + (f"unknown keys {sorted(unknown)}; " if unknown else "")
                              + (f"missing keys {sorted(missing)}; " if missing else "") + f"valid keys: {sorted(_KEYS)}")
        ov = d.get("overrides", {})
        if not isinstance(ov, dict) or not all(isinstance(v, str) for v in ov.values()):
            raise BoardsError(f"{path}: [{key}] overrides must map keys to strings")
        if d.get("paper") is not None and d["paper"] not in PAPER:
            raise BoardsError(f"{path}: [{key}] paper {d['paper']!r} is not one of {sorted(PAPER)}")
        boards.append(Board(key, d["title"], d["version"], (Path(path).parent / d["results"]).resolve(), d["dataset"],
                            d.get("preset"), tuple(sorted(ov.items())), d.get("description", ""), d.get("command", ""),
                            d.get("paper")))
    return boards


def board_setting(board: Board) -> Setting:
    """The board's results; any damaged result file under its run folder is an error here."""
    bad = [str(r) for _, r in iter_results(board.results) if isinstance(r, ResultError)]
    if bad:
        raise ResultError(f"board {board.key}: damaged result file(s): " + "; ".join(bad))
    settings = load_settings(board.results, lambda _: None)
    found = [s for s in settings if (s.dataset, s.preset, s.overrides) == (board.dataset, board.preset, board.overrides)]
    if len(found) != 1:
        present = "; ".join(sorted({f"dataset {s.dataset!r}, preset {s.preset!r}, overrides {dict(s.overrides)}"
                                    for s in settings})) or "none"
        raise ResultError(f"board {board.key}: {'no' if not found else 'several data versions of'} results for dataset "
                          f"{board.dataset!r}, preset {board.preset!r}, overrides {dict(board.overrides)} under "
                          f"{board.results} (settings there: {present})")
    return found[0]


# ---------------------------------------------------------------------------------- tables
def ranked_table(st: Setting) -> Table:
    """The overall table ranked by mean final score (pop keeps its place: a method below it learned nothing)."""
    t = overall_table(st)
    if t is None:
        raise ResultError(f"{st.label}: no default-order results to rank")
    col = t.headers.index("mean")
    means = [mean_std(row[col]) for row in t.rows]
    order = sorted(range(len(t.rows)), key=lambda i: (means[i] is None, -(means[i] or (0.0,))[0]))
    t.rows = [[str(k + 1) if means[i] is not None else "-", *t.rows[i]] for k, i in enumerate(order)]
    moved = {i: k for k, i in enumerate(order)}  # the annotations follow their cells: rows reordered, one column in front
    t.annotations = {(moved[r], c + 1): text for (r, c), text in t.annotations.items()}
    t.headers, t.best, t.digits, t.key = ["rank", *t.headers], [None, *t.best], [0, *t.digits], 1
    t.name, t.title = "leaderboard", f"Leaderboard, {st.label}"
    unranked = [row[1] for row in t.rows if row[0] == "-"]
    t.note += " Ranked by the all-task mean" + (f"; a row without one ({', '.join(unranked)}) is listed last, unranked."
                                                if unranked else ".")
    return t


def _hardware(env: dict) -> str:
    return f"{env['device_name']} ({env['machine']}, {env['threads']} thread{'s' if env['threads'] != 1 else ''})"


def provenance_table(st: Setting) -> Table:
    """Who computed each row: seeds, curb/torch versions, hardware, cell time and dates."""
    rows = []
    for m in st.methods():
        rs = st.select(method=m)
        envs = [r["env"] for r in rs]
        rows.append([m, str(len(rs)), ",".join(str(spec_of(r).seed) for r in rs),
                     ", ".join(sorted({e["curb"] for e in envs})), ", ".join(sorted({e["torch"] for e in envs})),
                     "; ".join(sorted({_hardware(e) for e in envs})),
                     f"{np.mean([r['timings']['total_s'] for r in rs]):.0f}",
                     ", ".join(sorted({r["created"][:10] for r in rs}))])
    return Table("provenance", "Provenance of each row", ["method", "cells", "seeds", "curb", "torch", "hardware",
                                                          "mean cell s", "computed"], rows)


def _shared_config(r: dict) -> dict:
    """preset/backbone/train/split of a result, flattened to `section.key`; results older than
    `backbone.item_init` were random-initialised, so the knob's defaults are filled in."""
    cfg = r["config"]
    flat = {"preset": cfg["preset"]}
    for section in ("backbone", "train", "split"):
        values = {"item_init": "random", "text_proj": "pca", **cfg[section]} if section == "backbone" else cfg[section]
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    return flat


def config_blocks(st: Setting) -> list[Block]:
    """The exact configuration: the values most rows share once, then per method its own knobs and
    the shared values it overrides (a tuned learning rate, say); the tuned file, if any, is named."""
    by_method = {m: st.select(method=m) for m in st.methods()}
    firsts = [_shared_config(rs[0]) for rs in by_method.values()]
    shared = {}
    for key in dict.fromkeys(k for f in firsts for k in f):  # the most common value; ties: the first method's
        values = [json.dumps(f.get(key), sort_keys=True) for f in firsts]
        shared[key] = json.loads(max(dict.fromkeys(values), key=values.count))
    rows, uneven = [], []
    for m, rs in by_method.items():
        own = {k: v for k, v in _shared_config(rs[0]).items() if shared.get(k) != v}
        rows.append([m, f"`{json.dumps(rs[0]['config']['method'], sort_keys=True)}`",
                     f"`{json.dumps(own, sort_keys=True)}`" if own else "-"])
        if any(_shared_config(r) != _shared_config(rs[0]) or r["config"]["method"] != rs[0]["config"]["method"]
               for r in rs[1:]):
            uneven.append(m)
    sections: dict[str, object] = {"preset": shared.pop("preset")}
    for key, v in shared.items():  # back from `section.key` to one row per section
        head, rest = key.split(".", 1)
        sections.setdefault(head, {})[rest] = v
    blocks: list[Block] = [Table("config-shared", "Shared by the rows (a method's overrides are in the next table)",
                                 ["section", "config"],
                                 [[k, f"`{json.dumps(v, sort_keys=True)}`"] for k, v in sections.items()])]
    tuned = sorted({r["config"].get("tuned") or "none" for r in st.select()})
    if tuned != ["none"]:
        blocks.append("Tuned configuration (`curb tune`, chosen on validation only, docs/protocol.md §4.9; "
                      "`<file>@<first 12 hex digits of its SHA-256>`): "
                      + ", ".join(f"`{t}`" for t in tuned) + ". Its values are the per-method overrides below.")
    if uneven:
        blocks.append(f"Rows whose seeds ran different configs: {', '.join(uneven)} (see their result files).")
    blocks.append(Table("config-method", "Each method's own config, and the shared values it overrides",
                        ["method", "method config", "overrides of the shared config"], rows))
    return blocks


def results_frame(board: Board, st: Setting) -> pd.DataFrame:
    """One row per result file of the setting: identity, per-task finals, means, provenance."""
    names = task_names(st.results)
    rows = []
    for r in sorted(st.results, key=lambda r: (method_rank(spec_of(r).method), spec_of(r).order_tag,
                                               spec_of(r).method_overrides, spec_of(r).seed)):
        s = spec_of(r)
        rows.append({"board": board.key, "version": board.version, "method": s.method, "order": s.order,
                     "noise": s.noise, "variant": ";".join(f"{k}={v}" for k, v in s.method_overrides),
                     "seed": s.seed, "cell": s.hash, **{n: r["final"].get(n) for n in names},
                     "mean": mean_final(r), "bwt_mean": transfer_mean(r, "bwt"), "fwt_mean": transfer_mean(r, "fwt"),
                     "curb": r["env"]["curb"], "torch": r["env"]["torch"], "hardware": _hardware(r["env"]),
                     "total_s": round(r["timings"]["total_s"], 1), "created": r["created"],
                     "fingerprint": r["dataset"]["fingerprint"]})
    return pd.DataFrame(rows)


def results_csv(board: Board, st: Setting) -> str:
    return results_frame(board, st).to_csv(index=False, float_format="%.6g")


def board_page(board: Board, st: Setting, figures_dir: Path | None) -> Page:
    """A board as a page (rendered as its README and its site page); figures drawn into
    `figures_dir` when given."""
    sections = build_sections(st, figures_dir, SECTIONS)
    overall = next(s for s in sections if s.title == "overall")
    claims = [s for s in sections if s.title == "claims"]
    rest = [s for s in sections if s.title not in ("overall", "claims")]
    seeds = sorted({spec_of(r).seed for r in st.select()})
    presets = sorted({r["config"]["preset"] for r in st.results})  # the dataset's default when the board names none
    intro: list[Block] = [
        f"Benchmark version **{board.version}** · dataset `{board.dataset}` · preset `{'`, `'.join(presets)}`"
        f" · seeds {', '.join(map(str, seeds))} · {st.n_files} result files in `{board.results.name}/` · "
        "built by `curb leaderboard build` from those files only.", *paragraphs(board.description)]
    if board.command:
        intro += ["Reproduce the rows:", Code(board.command)]
    # the ranked table replaces the overall section's first block (its overall table); its ranks and figures follow
    parts = [Part("Leaderboard", [ranked_table(st), *overall.blocks[1:]]),
             *[Part("Claims", c.blocks) for c in claims],
             *([Part("Against the paper", [t])] if board.paper and (t := paper_table(st, board.paper)) else []),
             Part("Provenance", [provenance_table(st)]),
             Part("Configuration", config_blocks(st))]
    if rest:
        parts.append(Part("Experiments", parts=rest))
    parts.append(Part("How to add a row", ["See [docs/leaderboards.md](../../docs/leaderboards.md)."]))
    return Page(board.title, intro, parts)


def index_page(boards: list[Board], settings: dict[str, Setting], *, site: bool) -> Page:
    """The list of boards; `site`: links to the site's pages instead of the READMEs."""
    rows = []
    for b in boards:
        st = settings[b.key]
        means = {m: ms[0] for m in st.methods() if (ms := mean_std(mean_final(r) for r in st.select(method=m)))}
        best = max((m for m in means if m != "pop"), key=lambda m: means[m], default=None)
        rows.append([f"[{b.title}]({b.key}.html)" if site else f"[{b.title}]({b.key}/README.md)", b.version,
                     f"`{b.dataset}`", str(len(st.methods())), f"{means[best]:.4f}" if best else "-", best or "-",
                     f"{means['pop']:.4f}" if "pop" in means else "-"])
    docs = "../../docs/leaderboards.md" if site else "../docs/leaderboards.md"
    return Page("curb leaderboards", [
        "Built from committed result files by `curb leaderboard build`; `curb leaderboard check` (run in CI) "
        "fails when a table no longer matches its results. Every board carries the `pop` "
        "(popularity / majority-class) baseline.",
        Table("boards", "Boards", ["board", "version", "dataset", "rows", "best mean", "best method", "pop mean"],
              rows),
        f"How an outside method gets a row: [docs/leaderboards.md]({docs})."])


SITE_FOOTER = ("Built by `curb leaderboard build` from the committed result files; `curb leaderboard check` fails "
               "when a page no longer matches them.")


def site_files(site_dir: Path, boards: list[Board], settings: dict[str, Setting], pages: dict[str, Page]
               ) -> dict[Path, str]:
    """The static site: index.html, one page per board, and the stylesheet and script they share."""
    files = {site_dir / "index.html": page_html(index_page(boards, settings, site=True), figures="",
                                                links=[("index.html", "All boards")], footer=SITE_FOOTER)}
    for b in boards:
        links = [("index.html", "All boards"), (f"../{b.key}/README.md", "README.md"),
                 (f"../{b.key}/results.csv", "results.csv")]
        files[site_dir / f"{b.key}.html"] = page_html(pages[b.key], figures=f"../{b.key}/figures", links=links,
                                                      footer=SITE_FOOTER)
    files.update({site_dir / name: asset(name) for name in ASSETS})
    return files


# ---------------------------------------------------------------------------------- build / check
def _render_all(boards_file: Path, figures: bool) -> tuple[list[Board], dict[Path, str]]:
    """The boards of `boards_file` and every file they render to (path -> text)."""
    root = Path(boards_file).parent
    boards = read_boards(boards_file)
    files, settings, pages = {}, {}, {}
    for b in boards:
        st = settings[b.key] = board_setting(b)
        page = pages[b.key] = board_page(b, st, root / b.key / "figures" if figures else None)
        files[root / b.key / "README.md"] = markdown(page)
        files[root / b.key / "results.csv"] = results_csv(b, st)
    files[root / "README.md"] = markdown(index_page(boards, settings, site=False))
    files.update(site_files(root / "site", boards, settings, pages))
    readme = root.parent / "README.md"  # the repository README may embed one board's table
    if readme.exists() and _MARK.search(readme.read_text()):
        def table(m: re.Match) -> str:
            if m.group(2) not in settings:
                raise BoardsError(f"{readme} embeds board {m.group(2)!r}, which {boards_file} does not define")
            return f"{m.group(1)}\n{ranked_table(settings[m.group(2)]).markdown()}\n{m.group(3)}"

        files[readme] = _MARK.sub(table, readme.read_text())
    return boards, files


def _links(path: Path, text: str) -> list[str]:
    """The local links of a rendered file: a page's src/href, a README's figure lines."""
    if path.suffix == ".html":
        return _HTML_LINK.findall(text)
    return [ln.split("](", 1)[1].split(")", 1)[0] for ln in text.splitlines() if ln.startswith("![")]


def _linked(files: dict[Path, str]) -> set[Path]:
    """Every local file the rendered READMEs and pages link to."""
    return {(path.parent / link).resolve() for path, text in files.items() for link in _links(path, text)}


def _leftover_figures(root: Path, boards: list[Board], files: dict[Path, str]) -> list[Path]:
    """Files in a board's figures/ that no README or page links to (a board's setting or
    figure set changed): they would be published without being shown or checked."""
    linked = _linked(files)
    return sorted(f for b in boards for f in (root / b.key / "figures").glob("*")
                  if f.is_file() and f.resolve() not in linked)


def build(boards_file: Path = BOARDS_FILE, echo: Callable[[str], None] = print, figures: bool = True) -> list[Path]:
    """Write every board's README, results.csv and figures, the index and the site; with figures,
    also remove the figure files no page links to any more."""
    boards, files = _render_all(boards_file, figures)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        echo(f"wrote {path}")
    for f in _leftover_figures(Path(boards_file).parent, boards, files) if figures else ():
        f.unlink()
        echo(f"removed {f} (no page links to it)")
    return list(files)


def check(boards_file: Path = BOARDS_FILE) -> list[str]:
    """Differences between the committed leaderboards and a rebuild from their results (empty: all current)."""
    problems = []
    root = Path(boards_file).parent.resolve()
    boards, files = _render_all(boards_file, figures=False)
    problems += [f"{f}: linked from no page (a leftover; `curb leaderboard build` removes it)"
                 for f in _leftover_figures(root, boards, files)]
    for path, text in files.items():
        if not path.exists():
            problems.append(f"{path}: missing (run `curb leaderboard build`)")
            continue
        old = path.read_text()
        if old != text:
            diff = next(i for i, (a, b) in enumerate(zip(old.splitlines() + [""], text.splitlines() + [""]))
                        if a != b)
            problems.append(f"{path}: differs from its results from line {diff + 1} "
                            f"(stored: {(old.splitlines() + [''])[diff][:80]!r}, "
                            f"rebuilt: {(text.splitlines() + [''])[diff][:80]!r})")
        for link in _links(path, text):
            target = (path.parent / link).resolve()  # a page's links into the boards' folder (figures, pages, CSVs)
            if path.suffix != ".html" and not target.exists():
                problems.append(f"{path}: figure {link} is missing (run `curb leaderboard build`)")
            elif path.suffix == ".html" and target.is_relative_to(root) and not target.exists():
                problems.append(f"{path}: link {link} leads to no file (run `curb leaderboard build`)")
    return problems


# ---------------------------------------------------------------------------------- locating
def find_boards(boards: Path | None = None, root: Path | None = None) -> Path:
    """The boards file `curb leaderboard` works on, from any folder: `boards` when given, else
    `leaderboards/boards.toml` under `root`, else under the current folder, else under the
    repository curb is installed from (an editable install: `pip install -e .`)."""
    if boards is not None:
        return boards
    if root is not None:
        tried = [root / BOARDS_FILE]
    else:
        import curb

        tried = [BOARDS_FILE, Path(curb.__file__).resolve().parents[1] / BOARDS_FILE]
    for path in tried:
        if path.is_file():
            return path
    looked = ", ".join(dict.fromkeys(str(p.resolve()) for p in tried))
    raise BoardsError(f"no {BOARDS_FILE} found (looked for {looked}); the boards live in a clone of the curb "
                      "repository: pass --root DIR (the clone) or --boards FILE")
