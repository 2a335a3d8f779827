"""The static leaderboard site: markup and sync checks here, and the committed site in a real
headless Chromium (driven over the DevTools protocol with `websocket-client`): every page loads
without a console error, every image and local link resolves, a header click sorts its table,
and a screenshot of each page is saved to test-artifacts/ (CI keeps it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from curb.document import Figure, Page, Part
from curb.leaderboard import build, check
from curb.site import inline_html, page_html, sort_value
from curb.tables import Table

ROOT = Path(__file__).parents[1]
SITE = ROOT / "leaderboards" / "site"
DATA = Path(__file__).parent / "data"
ARTIFACTS = Path(os.environ.get("CURB_TEST_ARTIFACTS", ROOT / "test-artifacts"))


# ---------------------------------------------------------------------------------- markup
def test_inline_markdown_is_escaped_and_converted():
    assert inline_html("a <b> & `x<y>` **bold** *em* [docs](../d.md)") == (
        'a &lt;b&gt; &amp; <code>x&lt;y&gt;</code> <strong>bold</strong> <em>em</em> <a href="../d.md">docs</a>')


def test_sort_values_read_the_number_behind_a_cell():
    assert sort_value([0.1, 0.3]) == pytest.approx(0.2)  # per-seed cell: its mean
    assert sort_value([None]) is None and sort_value("-") is None
    assert sort_value("0.0195 ± 0.0005 (+1.25%)") == 0.0195 and sort_value("7") == 7.0
    assert sort_value("0,1,2") == "0,1,2" and sort_value("teracon") == "teracon"


def test_page_renders_any_part_and_table_with_accessible_markup():
    """A part the renderer has never seen (say a claims table added later) needs no renderer change."""
    claims = Table("claims", "Claims", ["claim", "verdict", "p"], [["TERACON is best", "**confirmed**", [0.01, 0.03]]],
                   note="Holm-corrected.")
    page = Page("Board", ["intro"], [Part("Claims", [claims]), Part("Figures", [Figure("f", "A figure")])])
    html = page_html(page, figures="figs", links=[("index.html", "All boards")], footer="built")
    assert '<caption id="table-claims-caption">Claims</caption>' in html
    assert '<th scope="col"><button type="button">verdict</button></th>' in html
    assert '<th scope="row">TERACON is best</th>' in html and '<td data-sort="0.02">' in html
    assert '<td class="text"><strong>confirmed</strong></td>' in html and "Holm-corrected." in html
    assert '<img src="figs/f.png" alt="A figure">' in html and '<a href="#claims">Claims</a>' in html
    assert "http" not in html.replace('lang="en"', "")  # nothing fetched from the network


def test_check_fails_when_the_site_drifts_or_a_page_links_to_nothing(tmp_path):
    shutil.copytree(DATA / "mini-run", tmp_path / "mini-run")
    shutil.copy(DATA / "mini-boards.toml", tmp_path / "boards.toml")
    build(tmp_path / "boards.toml", echo=lambda _: None, figures=False)
    (tmp_path / "mini" / "figures").mkdir()
    for stem in set(re.findall(r"figures/([\w.-]+)\.png", (tmp_path / "mini" / "README.md").read_text())):
        for ext in ("png", "svg"):  # every figure the page names, as an empty stand-in (figures=False)
            (tmp_path / "mini" / "figures" / f"{stem}.{ext}").write_text("")
    assert check(tmp_path / "boards.toml") == []
    page = tmp_path / "site" / "mini.html"
    page.write_text(page.read_text().replace("teracon", "TERACON", 1))
    assert any("site/mini.html: differs" in p for p in check(tmp_path / "boards.toml"))
    build(tmp_path / "boards.toml", echo=lambda _: None, figures=False)
    (tmp_path / "mini" / "results.csv").rename(tmp_path / "results.csv")
    problems = check(tmp_path / "boards.toml")
    assert any("site/mini.html: link ../mini/results.csv leads to no file" in p for p in problems)
    (tmp_path / "site" / "sort.js").unlink()
    assert any("site/sort.js: missing" in p for p in check(tmp_path / "boards.toml"))


# ---------------------------------------------------------------------------------- browser
def _chromium() -> str:
    exe = next((e for e in ("chromium", "chromium-browser", "google-chrome") if shutil.which(e)), None)
    if exe is None:
        pytest.skip("no Chromium on PATH (.ci/run installs Debian's chromium; apt-get install chromium)")
    pytest.importorskip("websocket", reason="the browser test needs websocket-client (pip install 'curb[test]')")
    return exe


class Browser:
    """One headless Chromium page driven over the DevTools protocol; collects console errors,
    uncaught exceptions and failed loads of every page it visits."""

    def __init__(self, exe: str, profile: Path):
        import websocket

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60  # a limit, not a measurement: startup takes about a second
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.fail("Chromium did not start (no DevToolsActivePort)")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id, self.errors, self.events = 0, [], []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self._receive()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def _receive(self) -> dict:
        msg = json.loads(self.ws.recv())
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            self.errors.append(f"console: {[a.get('value', a.get('description')) for a in p['args']]}")
        elif method == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description')}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            self.errors.append(f"load failed: {p['errorText']}")
        if method:
            self.events.append(method)
        return msg

    def open(self, path: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", url=path.as_uri())
        while "Page.loadEventFired" not in self.events:
            self._receive()

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the element."""
        x, y = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView(); "
                       "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        import base64

        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(_chromium(), tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _column(browser: Browser, table: str, col: int) -> list[str | None]:
    return browser.js(f"Array.from(document.querySelectorAll('#{table} tbody tr')).map(r => "
                      f"r.cells[{col}].dataset.sort ?? r.cells[{col}].textContent.trim())")


def test_every_committed_page_loads_cleanly_with_working_images_and_links(browser):
    pages = sorted(SITE.glob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "ml.html"}
    for page in pages:
        browser.errors.clear()
        browser.open(page)
        assert browser.errors == [], f"{page.name}: {browser.errors}"
        broken = browser.js("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                            ".map(i => i.src)")
        assert broken == [], f"{page.name}: broken images {broken}"
        for href in browser.js("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
            url = urllib.parse.urlsplit(href)
            assert url.scheme == "file", f"{page.name}: link {href} leaves the site (it must work offline)"
            assert Path(urllib.parse.unquote(url.path)).exists(), f"{page.name}: link {href} leads to no file"
            if url.fragment:
                assert browser.js(f"document.getElementById({json.dumps(url.fragment)}) !== null"), href
        assert browser.js("document.querySelectorAll('table').length") >= 1
        browser.screenshot(ARTIFACTS / f"site-{page.stem}.png")


def test_clicking_a_header_sorts_the_leaderboard(browser):
    browser.open(SITE / "ml.html")
    heads = browser.js("Array.from(document.querySelectorAll('#table-leaderboard thead th')).map(h => h.textContent)")
    mean = heads.index("mean")
    browser.click(f"#table-leaderboard thead th:nth-child({mean + 1}) button")
    values = _column(browser, "table-leaderboard", mean)
    numbers = [float(v) for v in values if v != ""]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) >= 8  # numbers first, best on top
    assert values[len(numbers):] == [""] * (len(values) - len(numbers))  # no mean (MTL): last
    assert browser.js(f"document.querySelectorAll('#table-leaderboard thead th')[{mean}]"
                      ".getAttribute('aria-sort')") == "descending"
    browser.click(f"#table-leaderboard thead th:nth-child({mean + 1}) button")
    again = [float(v) for v in _column(browser, "table-leaderboard", mean) if v != ""]
    assert again == sorted(numbers)
    method = heads.index("method")
    browser.click(f"#table-leaderboard thead th:nth-child({method + 1}) button")
    names = _column(browser, "table-leaderboard", method)
    assert names == sorted(names) and "teracon" in names
    browser.screenshot(ARTIFACTS / "site-ml-sorted-by-method.png")
