"""Each python example of README.rst and docs/*.rst can be copied on its own (issue 12,
probe12 9; issue 16).

test_readme.py runs each document in order, in one namespace -- which lets a
block lean on the imports of the block before it, and a reader who copies
that block alone gets a NameError.  Here every ``.. code-block::
python`` is read on its own: each name it uses must be bound in the block
itself (an import, an assignment, a parameter) or be one of the few things
the prose hands over (``request`` in a view...), listed below.
"""
from __future__ import annotations

import ast
import builtins
import pathlib
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

#: Names a block may use without defining them: what the prose around it says a
#: view or the app already has.
GIVEN = {"request", "user", "token", "terms_pdf_path", "make_notification"}


def python_blocks(text):
    """``(line number, source)`` of each ``.. code-block:: python``."""
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        if lines[index].strip() != ".. code-block:: python":
            index += 1
            continue
        start = index + 1
        index = start
        while index < len(lines) and (not lines[index].strip()
                                      or lines[index].lstrip().startswith(":")):
            index += 1
        body = []
        while index < len(lines) and (not lines[index].strip()
                                      or lines[index].startswith("   ")):
            body.append(lines[index])
            index += 1
        yield start, textwrap.dedent("\n".join(body))


def free_names(source):
    """The names ``source`` reads and never binds (scopes flattened: a block's
    functions may use the block's names, which is what a reader copies)."""
    tree = ast.parse(source)
    bound = set(dir(builtins))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else used).add(node.id)
    return used - bound


def test_every_python_example_runs_when_copied_alone():
    """Was: the block at line 172 needed ``registry`` and ``msg``, the one at 1472
    ``testing`` and ``get_mailer``, the after-commit hook ``transaction``."""
    blocks = [(f"{path.name}:{line}", source) for path in DOCUMENTS
              for line, source in python_blocks(path.read_text())]
    assert len(blocks) > 10
    missing = {where: sorted(free_names(source) - GIVEN) for where, source in blocks}
    assert {where: names for where, names in missing.items() if names} == {}
