"""The built docs' pictures render in a real browser (issue 16).

The docs are built as ``make docs`` builds them, served on 127.0.0.1 (graphviz's
SVGs are ``<object>`` elements, whose documents a page may read only from the
same origin, which ``file://`` is not), and Debian's chromium opens the
transactions page -- the queue's state diagram must have drawn its states, and every
picture must be shown at its natural size (scrolling sideways when wider than the
column), never shrunk to small print --
and the benchmarks page -- each plot must have loaded with a size.  A screenshot
of each page goes to ``test-artifacts/docs/``.  Never skipped: chromium missing
is a failure (tests/chromium.py).
"""
from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest
from selenium.webdriver.support.ui import WebDriverWait

from .chromium import start_chromium
from .docs_support import ROOT, build_docs

ARTIFACTS = os.path.join(ROOT, "test-artifacts", "docs")
WAIT = 30

#: The states of the first diagram (the spool's) as graphviz titles its nodes.
SPOOL_STATES = {"tmp", "prepared", "new", "cur", "deferred", "failed", "done"}

#: Each graphviz picture of the page, once every one has loaded: its size and node titles.
DIAGRAMS = """
const drawn = [];
for (const object of document.querySelectorAll('object.graphviz')) {
  const svg = object.contentDocument && object.contentDocument.querySelector('svg');
  if (!svg) return null;
  const box = object.getBoundingClientRect();
  const width = svg.getAttribute('width');  // graphviz's: "816pt"
  drawn.push({width: box.width, height: box.height,
              natural: parseFloat(width) * (width.endsWith('pt') ? 4 / 3 : 1),
              column: object.parentElement.clientWidth,
              scrolls: object.parentElement.scrollWidth > object.parentElement.clientWidth,
              nodes: Array.from(svg.querySelectorAll('g.node > title'), t => t.textContent)});
}
return drawn.length ? drawn : null;
"""

PLOTS = """
return Array.from(document.querySelectorAll('img.txmail-plot'),
                  img => ({src: img.getAttribute('src'), complete: img.complete,
                           width: img.naturalWidth, shown: img.getBoundingClientRect().width}));
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    built = build_docs(out)
    assert built.returncode == 0, built.stdout[-6000:]
    handler = functools.partial(QuietHandler, directory=str(out / "html"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium(ARTIFACTS, "1300,1800", WAIT)
    yield driver
    driver.quit()


def test_the_state_diagram_renders_on_the_transactions_page(site, browser):
    browser.get(f"{site}/transactions.html")
    drawn = WebDriverWait(browser, WAIT).until(lambda b: b.execute_script(DIAGRAMS))
    browser.save_screenshot(os.path.join(ARTIFACTS, "transactions.png"))
    [states] = [d for d in drawn if SPOOL_STATES <= set(d["nodes"])]
    assert states["width"] > 0 and states["height"] > 0
    timelines = [d for d in drawn if d["nodes"] == ["steps"]]
    assert len(timelines) == 2 and all(t["width"] > 0 for t in timelines)
    for picture in drawn:  # at the size its text was laid out for, never shrunk to fit;
        # wider than the column, it scrolls sideways within its figure
        assert abs(picture["width"] - picture["natural"]) < 2, picture
        assert picture["scrolls"] == (picture["natural"] > picture["column"] + 1), picture
    for kind, shot in (("txmail-timeline", "timeline.png"), ("txmail-diagram", "states.png")):
        browser.execute_script(f"document.querySelector('figure.{kind}')"
                               ".scrollIntoView({behavior: 'instant', block: 'start'})")
        browser.save_screenshot(os.path.join(ARTIFACTS, shot))


def test_the_benchmark_plots_render_on_the_benchmarks_page(site, browser):
    browser.get(f"{site}/benchmarks.html")
    plots = WebDriverWait(browser, WAIT).until(
        lambda b: (lambda found: found if found and all(p["complete"] for p in found)
                   else None)(b.execute_script(PLOTS)))
    browser.execute_script("document.querySelector('img.txmail-plot').scrollIntoView()")
    browser.save_screenshot(os.path.join(ARTIFACTS, "benchmarks.png"))
    assert [p["src"] for p in plots] == ["_images/targets.svg", "_images/drain.svg",
                                         "_images/enqueue.svg"]
    assert all(p["width"] > 0 and p["shown"] > 0 for p in plots), plots
