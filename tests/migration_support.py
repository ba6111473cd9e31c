"""Real PyPI projects that use pyramid_mailer, switched to pyramid_txmail by their imports.

Issue 12 asks that a pyramid_mailer user switch by changing only the include and the
imports.  The claim is checked on real code: each project's released sdist is unpacked
into a temporary directory, the switch below is applied to its ``.py`` files, and the
project's own, otherwise unmodified test suite runs in a subprocess; it must pass with as
many tests as it does on pyramid_mailer (``tests_before``, which the harness measures
again on the pristine sdist in the same run).

The projects run in a virtualenv of their own, ``.venv-migration`` (``make test``
creates it from tests/migration_requirements.txt, exact pins, and downloads the
sdists into it): their pins cannot share the main test venv (pluserable's suite needs
SQLAlchemy 1.4, the demo extra needs 2.x).  pyramid_txmail is installed there editable
from this checkout, so the code under test is this tree's.

The switch, and nothing else (see SWITCH_IMPORTS and SWITCH_INCLUDES):

* ``config.include("pyramid_mailer")`` / ``"pyramid_mailer.testing"`` /
  ``"pyramid_mailer.debug"`` name ``pyramid_txmail`` / ``.testing`` / ``.debug``;
* ``from pyramid_mailer import get_mailer`` imports it from ``pyramid_txmail``;
* ``from pyramid_mailer.interfaces import IMailer`` from ``pyramid_txmail.interfaces``;
* ``from pyramid_mailer.mailer import DummyMailer`` from ``pyramid_txmail.testing``;
* ``from pyramid_mailer.message import Message`` stays: pyramid_mailer's ``Message`` is
  a message builder that pyramid_txmail accepts as it is (issue 12 point 4), not a mailer.

After the switch no pyramid_mailer mailer may be used: ``migration_guard`` (the
``sitecustomize`` of the project's processes) records any call into pyramid_mailer's mailers, ``get_mailer`` or
include, and the harness requires that record to be empty.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-migration"
PYTHON = VENV / "bin" / "python"
SDISTS = VENV / "sdists"
HERE = Path(__file__).resolve().parent
#: Files copied into a run's harness directory, under the name they get there (never
#: the tests/ folder itself on sys.path: the projects' test packages are ``tests`` too).
HARNESS_FILES = {"migration_guard.py": "sitecustomize.py",
                 "migration_drive_kinto.py": "drive_kinto.py",
                 "migration_drive_pluserable.py": "drive_pluserable.py"}
#: A project's suite takes ~10 s here; the limit only stops a hung run.
RUN_TIMEOUT = 600


@dataclasses.dataclass(frozen=True)
class Project:
    """A released project and how its own test suite is run."""

    name: str
    version: str
    sdist: str            # file name in SDISTS
    package_root: str     # folder of the unpacked sdist that holds the package ("" = top)
    package: str          # import name, to check the switched copy is the one imported
    pytest_args: tuple    # the project's own way of running its tests, from its root
    tests_before: int     # tests passing on pyramid_mailer, unmodified (measured again)
    switched_lines: tuple  # (file, line before, line after): the whole switch, expected


KINTO_EMAILER = Project(
    name="kinto-emailer", version="4.0.0", sdist="kinto_emailer-4.0.0.tar.gz",
    package_root="src", package="kinto_emailer",
    pytest_args=("tests",), tests_before=37,
    switched_lines=(
        ("src/kinto_emailer/__init__.py", "from pyramid_mailer import get_mailer",
         "from pyramid_txmail import get_mailer"),
        ("src/kinto_emailer/__init__.py",
         'config.include("pyramid_mailer" + (".debug" if debug else ""))',
         'config.include("pyramid_txmail" + (".debug" if debug else ""))'),
        ("src/kinto_emailer/command_send.py", "from pyramid_mailer import get_mailer",
         "from pyramid_txmail import get_mailer"),
    ),
)

PLUSERABLE = Project(
    name="pluserable", version="0.10.0", sdist="pluserable-0.10.0.tar.gz",
    package_root="", package="pluserable",
    # Its setup.cfg has a [pytest] section that pytest >= 7 refuses; its pytest.ini is
    # the one its README means ("py.test").
    pytest_args=("-c", "pytest.ini", "tests"), tests_before=70,
    switched_lines=(
        ("pluserable/actions.py", "from pyramid_mailer import get_mailer",
         "from pyramid_txmail import get_mailer"),
        ("tests/integration/test_views.py",
         "from pyramid_mailer.interfaces import IMailer",
         "from pyramid_txmail.interfaces import IMailer"),
        ("tests/integration/test_views.py",
         "from pyramid_mailer.mailer import DummyMailer",
         "from pyramid_txmail.testing import DummyMailer"),
    ),
)

#: ``from MODULE import NAME`` in pyramid_mailer -> the pyramid_txmail module to import
#: NAME from.  A name not listed stays imported from pyramid_mailer.
SWITCH_IMPORTS = {
    ("pyramid_mailer", "get_mailer"): "pyramid_txmail",
    ("pyramid_mailer.interfaces", "IMailer"): "pyramid_txmail.interfaces",
    ("pyramid_mailer.mailer", "DummyMailer"): "pyramid_txmail.testing",
    ("pyramid_mailer.mailer", "Mailer"): "pyramid_txmail",
}
#: ``config.include(...)`` arguments.
SWITCH_INCLUDES = {
    "pyramid_mailer": "pyramid_txmail",
    "pyramid_mailer.testing": "pyramid_txmail.testing",
    "pyramid_mailer.debug": "pyramid_txmail.debug",
}

_FROM_IMPORT = re.compile(r"^(?P<indent>\s*)from\s+(?P<module>pyramid_mailer(?:\.\w+)*)"
                          r"\s+import\s+(?P<names>[\w\s,]+?)\s*$")
_INCLUDE = re.compile(r"""(?P<head>\.include\(\s*)(?P<q>['"])(?P<name>pyramid_mailer"""
                      r"""(?:\.\w+)*)(?P=q)""")


class SwitchError(AssertionError):
    """A line the switch cannot express: it must be reported, not guessed."""


_ANY_IMPORT = re.compile(r"^\s*(from|import)\s+pyramid_mailer\b")


def switch_line(line):
    """The line with its pyramid_mailer include or import switched (or as it was)."""
    match = _FROM_IMPORT.match(line)
    if match:
        module = match["module"]
        names = [n.strip() for n in match["names"].split(",") if n.strip()]
        targets = {SWITCH_IMPORTS.get((module, name), module) for name in names}
        if len(targets) > 1:
            raise SwitchError(f"{line.strip()!r} imports names that move to different "
                              f"modules ({sorted(targets)}): split it first")
        target = targets.pop()
        if target == module:
            return line
        return f"{match['indent']}from {target} import {', '.join(names)}"
    if _ANY_IMPORT.match(line):
        raise SwitchError(f"{line.strip()!r}: only one-line `from pyramid_mailer... import "
                          f"NAMES` statements are switched; rewrite it as one")

    def include(m):
        new = SWITCH_INCLUDES.get(m["name"])
        if new is None:
            raise SwitchError(f"config.include of {m['name']!r} has no pyramid_txmail "
                              f"counterpart in SWITCH_INCLUDES")
        return f"{m['head']}{m['q']}{new}{m['q']}"
    return _INCLUDE.sub(include, line)


def switch_tree(root):
    """Apply the switch to every ``.py`` file under ``root``; return the changed lines
    as ``(relative file, before, after)`` with the lines stripped."""
    changed = []
    for path in sorted(Path(root).rglob("*.py")):
        with open(path, encoding="utf-8", newline="") as f:  # keep the line endings
            lines = f.readlines()
        out = []
        for line in lines:
            body = line.rstrip("\r\n")
            new = switch_line(body)
            if new != body:
                changed.append((str(path.relative_to(root)), body.strip(), new.strip()))
            out.append(new + line[len(body):])
        if changed and changed[-1][0] == str(path.relative_to(root)):
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write("".join(out))
    return tuple(changed)


def require_venv():
    """Fail (never skip) with the command that builds what is missing."""
    missing = [str(p) for p in (PYTHON, SDISTS) if not p.exists()]
    if missing:
        raise AssertionError(f"{', '.join(missing)} missing: run `make migration` (part "
                             f"of `make test`), which installs the real projects")


def unpack(project, dest):
    """Unpack the project's pinned sdist into ``dest``; return the project's root."""
    require_venv()
    archive = SDISTS / project.sdist
    if not archive.exists():
        raise AssertionError(f"{archive} missing: run `make migration`")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse odd members
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return Path(dest) / project.sdist[: -len(".tar.gz")]


def harness_dir(dest):
    """A directory with the guard and the drivers, to put on the project's sys.path."""
    target = Path(dest) / "harness"
    target.mkdir(exist_ok=True)
    for name, copied in HARNESS_FILES.items():
        shutil.copy(HERE / name, target / copied)
    return target


def project_env(project, root, harness=None, guard_log=None):
    """Environment for a subprocess that must import the project from ``root``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COV_", "TXMAIL_"))}
    paths = [str(harness)] if harness else []
    paths.append(str(Path(root) / project.package_root))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if guard_log:
        env["MIGRATION_GUARD_LOG"] = str(guard_log)
    return env


def imported_from(project, root, env):
    """Where the subprocess imports the project's package from (must be ``root``)."""
    proc = subprocess.run([str(PYTHON), "-c", f"import {project.package} as p; "
                           "print(p.__file__)"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip()).resolve()


@dataclasses.dataclass
class SuiteResult:
    tests: int
    failures: int
    errors: int
    skipped: int
    problems: list  # "test id: first line of the failure", for the assertion message
    output: str

    @property
    def passed(self):
        return self.tests - self.failures - self.errors - self.skipped

    def summary(self):
        lines = [f"{self.passed} passed, {self.failures} failed, {self.errors} errors, "
                 f"{self.skipped} skipped"]
        lines += self.problems[:40]
        if not self.tests:
            lines.append(self.output[-3000:])
        return "\n".join(lines)


def run_suite(project, root, env, junit):
    """Run the project's own tests with the migration venv's pytest; count from JUnit XML."""
    cmd = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", *project.pytest_args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    output = proc.stdout + proc.stderr
    if not Path(junit).exists():
        return SuiteResult(0, 0, 0, 0, [], output)
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    problems = []
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                problems.append(f"{case.get('classname')}::{case.get('name')}: "
                                f"{_first_cause(bad)}")
    return SuiteResult(**counts, problems=problems, output=output)


def _first_cause(element):
    """The line that says why: pytest's message, or for a collection failure (whose
    message is just "collection failure") the last ``E`` line of its report."""
    message = (element.get("message") or "").strip()
    if message and message != "collection failure":
        return message.splitlines()[0][:300]
    lines = [line for line in (element.text or "").splitlines() if line.startswith("E ")]
    return lines[-1][1:].strip()[:300] if lines else message or "?"


def guard_calls(log):
    """The pyramid_mailer mailer calls the guard recorded (empty when none)."""
    path = Path(log)
    return path.read_text().splitlines() if path.exists() else []


def guard_call_names(log):
    """The distinct calls the guard recorded, without the pid each line ends with."""
    return {line.split(" (pid")[0] for line in guard_calls(log)}


def drive(script, project, root, harness, guard_log, *args, cwd=None):
    """Run one of the driver scripts (the project's real code path that sends mail)."""
    env = project_env(project, root, harness, guard_log)
    return subprocess.run([str(PYTHON), str(Path(harness) / script), str(root), *args],
                          cwd=cwd or root, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def run_console_script(name, args, project, root, harness, guard_log, cwd):
    """Run a console script installed in the migration venv (its code from ``root``)."""
    env = project_env(project, root, harness, guard_log)
    return subprocess.run([str(VENV / "bin" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def project_fixtures(project):
    """The fixtures every project's test module uses, as ``pristine, switched, harness
    = project_fixtures(PROJECT)``: the sdist unpacked as released; unpacked and switched,
    with the lines the switch changed; a harness directory and its guard log."""

    @pytest.fixture(scope="module")
    def pristine(tmp_path_factory):
        return unpack(project, tmp_path_factory.mktemp("pristine"))

    @pytest.fixture(scope="module")
    def switched(tmp_path_factory):
        root = unpack(project, tmp_path_factory.mktemp("switched"))
        return root, switch_tree(root)

    @pytest.fixture
    def harness(tmp_path):
        return harness_dir(tmp_path), tmp_path / "guard.log"

    return pristine, switched, harness


def assert_suite_passes(project, root, junit, harness=None):
    """The project's own suite, imported from ``root``, passes with ``tests_before``
    tests; given the ``harness`` (after the switch), the guard recorded no call."""
    # Explicit messages: pytest does not rewrite the asserts of this module.
    env = project_env(project, root, *(harness or ()))
    where = imported_from(project, root, env)
    assert where.is_relative_to(root), f"{project.package} imported from {where}, not {root}"
    result = run_suite(project, root, env, junit)
    assert (result.passed, result.failures, result.errors) == (project.tests_before, 0, 0), \
        result.summary()
    if harness is not None:
        calls = guard_calls(harness[1])
        assert calls == [], calls
