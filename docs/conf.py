"""Sphinx configuration of pyramid_txmail's documentation (``make docs``).

The build runs with ``-W`` (warnings are errors) inside ``make test``
(tests/test_docs_build.py), so a broken reference fails the suite.  The
pictures are generated at build time from the code and data
(``_ext/txmail_docs.py``, bench/plots.py), never drawn by hand.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's pyramid_txmail for autodoc

project = "pyramid_txmail"
author = "pyramid_txmail developers"
copyright = "pyramid_txmail developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "myst_parser",
    "txmail_docs",
]

# RST chapters, and the generated Markdown reports (RELIABILITY.md, bench/RESULTS.md)
# that reliability.rst and benchmarks.rst include through myst_parser.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# The Markdown reports are included into pages, never pages of their own.
exclude_patterns = ["_build", "RELIABILITY.md", "examples"]
myst_heading_anchors = 0
suppress_warnings = ["myst.header"]

graphviz_output_format = "svg"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"

html_theme = "furo"
html_title = "pyramid_txmail"
