"""Building the Sphinx documentation in the tests (tests/test_docs_*.py).

The build is the one ``make docs`` runs -- ``sphinx-build -W --keep-going`` --
into a temporary directory, so the suite never writes into docs/.
"""
from __future__ import annotations

import html.parser
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def build_docs(out):
    """Build the HTML docs into ``out``; the finished process (its output in ``stdout``)."""
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


class TableRows(html.parser.HTMLParser):
    """The rows (lists of cell texts) of the tables with the class ``wanted``."""

    def __init__(self, wanted):
        super().__init__()
        self.wanted, self.depth, self.rows, self.cell = wanted, 0, [], None

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table" and (self.depth or self.wanted in classes):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table_rows(page, wanted):
    parser = TableRows(wanted)
    parser.feed(page.read_text())
    return parser.rows


def docs_extension(name):
    """A module of docs/_ext (where Sphinx's conf.py puts it on the path), imported."""
    import importlib

    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(DOCS / "_ext"))


def edge_labels(svg):
    """``{(from, to): label}`` of a graphviz SVG: each edge's ``<title>`` (``a->b``)
    and the lines of its label's ``<text>`` elements, joined by newlines."""
    import xml.etree.ElementTree as ET

    ns = {"svg": "http://www.w3.org/2000/svg"}
    labels = {}
    for group in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g"):
        if group.get("class") != "edge":
            continue
        source, target = group.find("svg:title", ns).text.split("->")
        lines = [text.text or "" for text in group.iterfind(".//svg:text", ns)]
        labels[(source, target)] = "\n".join(lines)
    return labels
