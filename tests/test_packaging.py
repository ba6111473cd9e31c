"""The release artefacts: ``python -m build`` makes an sdist and, from it, a wheel that
PyPI would take and that work in an empty virtualenv.

Built from a copy of the working tree (the files git tracks or would track), so the
checkout is not written to, and offline: build's isolated environments and the empty
virtualenvs take their packages from ``.deps/wheelhouse`` (``make wheelhouse``, a
prerequisite of ``make test``) with ``--no-index``.  ``python -m build`` without
``--sdist``/``--wheel`` builds the wheel from the unpacked sdist, as pip does, so an
sdist missing a file the build needs fails here.  About 15 s on 2 cores.
"""
from __future__ import annotations

import configparser
import email
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

import pyramid_txmail

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".deps" / "wheelhouse"
NAME = "pyramid_txmail"
VERSION = pyramid_txmail.__version__
#: Tracked files the sdist leaves out on purpose: the repository's CI hook (it runs
#: `make test`, which the sdist has) and git's own file.
NOT_IN_SDIST = (".ci/", ".gitignore")
SCRIPTS = ("txmail-qp", "txmail-queue")


def _run(command, **kwargs):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=300, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _offline_env():
    """The environment without pip's configuration, with the wheelhouse as the only
    source of packages, and nothing pointing into the checkout or the test's venv."""
    if not (WHEELHOUSE / ".filled").exists():
        pytest.fail(f"{WHEELHOUSE} is not filled: run `make wheelhouse` (make test does)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _source_files():
    """The working tree's files that git tracks or would track (not the ignored ones)."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                  cwd=ROOT).stdout
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist, wheel) built from a copy of the tree, the wheel from the sdist."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "build", "--outdir", base / "dist", source], env=_offline_env())
    sdist = base / "dist" / f"{NAME}-{VERSION}.tar.gz"
    wheel = base / "dist" / f"{NAME}-{VERSION}-py3-none-any.whl"
    built = sorted(p.name for p in (base / "dist").iterdir())
    assert built == sorted([sdist.name, wheel.name])
    return sdist, wheel


def _wheel_names(wheel):
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def _wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        return email.message_from_bytes(z.read(f"{NAME}-{VERSION}.dist-info/METADATA"))


def test_twine_check_strict_passes_on_both(dists):
    done = _run([Path(sys.executable).with_name("twine"), "check", "--strict", *dists])
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_wheel_holds_every_file_of_the_package(dists):
    """Data files too (the Alembic migrations): every file under pyramid_txmail/ that git
    tracks, so a file the code loads at run time cannot be left out of the wheel."""
    package_files = {n for n in _source_files() if n.startswith(f"{NAME}/")}
    assert any(n.endswith(".mako") for n in package_files)  # a data file is among them
    assert package_files - _wheel_names(dists[1]) == set()


def test_the_sdist_holds_every_tracked_file(dists):
    """The sdist is the whole source release (MANIFEST.in says why): the package, the
    changelog and licence, the docs' sources and the test suite with what it drives."""
    prefix = f"{NAME}-{VERSION}/"
    with tarfile.open(dists[0]) as tar:
        names = {m.name[len(prefix):] for m in tar.getmembers() if m.isfile()}
    wanted = {n for n in _source_files() if not n.startswith(NOT_IN_SDIST)}
    assert {"CHANGES.rst", "LICENSE.txt", "README.rst", "pyproject.toml"} <= wanted
    assert wanted - names == set()


def test_the_metadata_is_complete(dists):
    meta = _wheel_metadata(dists[1])
    assert (meta["Name"], meta["Version"]) == (NAME, VERSION)
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE.txt"]
    assert meta["Requires-Python"] == ">=3.9"
    classifiers = meta.get_all("Classifier")
    assert "Framework :: Pyramid" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert meta["Description-Content-Type"] == "text/x-rst"
    assert meta.get_payload().startswith("pyramid_txmail\n==============\n")
    # the dependencies and extras of the editable install the suite runs on: one source
    assert sorted(meta.get_all("Requires-Dist")) == sorted(distribution(NAME).requires)
    assert {"testing", "toolbar", "demo", "sql", "ops"} <= set(meta.get_all("Provides-Extra"))


def test_the_entry_points(dists):
    with zipfile.ZipFile(dists[1]) as z:
        text = z.read(f"{NAME}-{VERSION}.dist-info/entry_points.txt").decode()
    points = configparser.ConfigParser()
    points.read_string(text)
    assert dict(points["console_scripts"]) == {
        "txmail-qp": "pyramid_txmail.scripts.qp:main",
        "txmail-queue": "pyramid_txmail.scripts.queue:main"}
    assert dict(points["pytest11"]) == {"pyramid_txmail": "pyramid_txmail.dev.pytest_plugin"}


def test_setup_cfg_holds_tool_configuration_only():
    """setuptools overrides [metadata]/[options] with pyproject.toml's [project] (an extra
    added to setup.cfg would vanish from the package with a mere warning)."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    misplaced = [s for s in parser.sections() if s.split(".")[0] in ("metadata", "options")]
    assert misplaced == [], f"setup.cfg: move {misplaced} to pyproject.toml's [project]"


INSPECT = """
import importlib.metadata, importlib.resources, json, sys
import pyramid_txmail
# the top package only: pyramid_txmail.queue.sql imports SQLAlchemy (the sql extra)
migrations = importlib.resources.files("pyramid_txmail") / "queue" / "sql" / "migrations"
print(json.dumps({
    "version": pyramid_txmail.__version__,
    "metadata_version": importlib.metadata.version("pyramid_txmail"),
    "file": pyramid_txmail.__file__,
    "prefix": sys.prefix,
    "migrations": sorted(p.name for p in migrations.iterdir() if p.is_file())
                  + sorted("versions/" + p.name for p in (migrations / "versions").iterdir()
                           if p.name.endswith(".py")),
}))
"""


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def installed(request, dists, tmp_path_factory):
    """A virtualenv with no packages and no system site packages, then pyramid_txmail
    installed from the wheel, or from the sdist (pip builds it, offline too)."""
    venv = tmp_path_factory.mktemp(f"venv-{request.param}") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    dist = dists[0] if request.param == "sdist" else dists[1]
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", dist],
         env=_offline_env())
    return venv


def test_installed_package_reports_its_version_and_migrations(installed, tmp_path):
    # cwd: an empty folder, so `python -c` cannot import the checkout instead
    done = _run([installed / "bin" / "python", "-c", INSPECT], cwd=tmp_path, env=_offline_env())
    found = json.loads(done.stdout)
    assert found["version"] == found["metadata_version"] == VERSION
    assert found["prefix"] == str(installed)
    assert Path(found["file"]).is_relative_to(installed)
    source = ROOT / NAME / "queue" / "sql" / "migrations"
    expected = sorted(p.name for p in source.iterdir() if p.is_file()) + sorted(
        "versions/" + p.name for p in (source / "versions").glob("*.py"))
    assert found["migrations"] == expected


@pytest.mark.parametrize("script", SCRIPTS)
def test_installed_console_script_help(installed, tmp_path, script):
    done = _run([installed / "bin" / script, "--help"], cwd=tmp_path, env=_offline_env())
    assert done.stdout.startswith(f"usage: {script} "), done.stdout
