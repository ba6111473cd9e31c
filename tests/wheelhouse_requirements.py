"""Print what an empty virtualenv needs to build and install pyramid_txmail offline.

``make wheelhouse`` feeds this to ``pip wheel`` to fill ``.deps/wheelhouse``, from
which tests/test_packaging.py builds the sdist and the wheel (build-system.requires)
and installs them (the runtime dependencies) with ``--no-index``: the test itself
reaches no package index.  Read from pyproject.toml, so the wheelhouse cannot name
other requirements than the ones the package declares.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11: the testing extra brings tomli
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(pyproject=PYPROJECT):
    """build-system.requires, then [project] dependencies, one requirement each."""
    with open(pyproject, "rb") as f:
        data = tomllib.load(f)
    return list(data["build-system"]["requires"]) + list(data["project"]["dependencies"])


if __name__ == "__main__":
    sys.stdout.write("".join(line + "\n" for line in requirements()))
