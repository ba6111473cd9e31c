"""Every code example in README.rst runs, as written, in document order (issue 12, 7b).

Sybil finds the examples; each ``.. code-block::`` language has its evaluator:

``python``
    run in one namespace shared by the whole README.  A block with a
    ``:name:`` that names a file (``myapp/__init__.py``) is that file: it is
    written into the project directory instead, and later blocks import it.
``ini``
    written to the file its ``:name:`` names, if any; every section's ``mail.*``
    keys go through ``parse_settings`` with no warning (a typo is a failure); a
    systemd unit's ``ExecStart=`` runs as a console command (below); Postfix's
    ``main.cf`` is checked by Postfix's own ``postconf`` (no unused parameter).
``jinja``
    written to the file its ``:name:`` names (the templates the python blocks render).
``console``
    each command (after ``$ `` when the block shows output) runs in the project
    directory with this venv's scripts and must exit 0.  ``make TARGET`` runs as
    ``make -n TARGET`` in the repository (running it is what this suite is);
    ``txmail-qp ... --daemon`` runs until it logs that it started, then gets SIGTERM
    and must exit 0.  ``/srv/app/`` -- where the examples install the app -- is
    the project directory, ``/srv/app/.venv/bin/`` this venv's scripts.
``text``
    output and listings: nothing to run (an invisible block after one may compare
    it with what the code says).  One with ``:class: crontab`` is a crontab line:
    the five time fields are checked and the command runs as above.

``.. invisible-code-block: python`` blocks (not rendered) set up what an example
takes as given (a ``request``, a ``registry``) and check what it did.  The project
directory is a fresh temporary directory, the working directory while the
examples run.  A literal block (``::``) or a language without an evaluator fails
``test_every_example_has_a_runner``: nothing in the README goes unchecked.
"""
from __future__ import annotations

import configparser
import logging
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap

import pytest
from sybil import Document
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.rest import CodeBlockParser

from . import readme_support

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
BIN = pathlib.Path(sys.executable).parent
POSTCONF = ROOT / ".deps/postfix/usr/sbin/postconf"
LANGUAGES = ("python", "ini", "jinja", "console", "text")


def option(example, name):
    return (example.region.lexemes.get("options") or {}).get(name, "").strip()


def file_name(example):
    """The file a block is: its ``:name:`` (docutils' code directive, which PyPI
    renders, has no ``:caption:``)."""
    return option(example, "name")


def project_file(example, name=None):
    """The file a named block is, inside the project directory."""
    name = name or file_name(example)
    return example.namespace["project"] / name.lstrip("/")


def write_named(example):
    path = project_file(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(str(example.parsed)))
    return path


_python = PythonEvaluator()


def evaluate_python(example):
    if file_name(example):  # a file of the example project
        write_named(example)
        return None
    return _python(example)


def evaluate_ini(example):
    name = file_name(example)
    text = textwrap.dedent(str(example.parsed))
    if name == "main.cf":
        return readme_support.check_postfix_main_cf(text, POSTCONF)
    if name:
        write_named(example)
    parser = configparser.ConfigParser(strict=False, interpolation=None if
                                       name.endswith(".service") else
                                       configparser.BasicInterpolation(),
                                       defaults={"here": str(example.namespace["project"])})
    parser.optionxform = str
    parser.read_string(text if text.lstrip().startswith("[") else "[app:main]\n" + text)
    if name.endswith(".service"):
        run_command(example, parser["Service"]["ExecStart"])
        return None
    for section in parser.sections():
        where = f"README line {example.line} [{section}]"
        readme_support.check_mail_settings(dict(parser[section]), where)
        if "pyramid.includes" in parser[section]:  # the app these settings make starts
            readme_support.check_includes(dict(parser[section]), where)
    return None


def evaluate_jinja(example):
    write_named(example)


def evaluate_text(example):
    """Output and listings: kept for the invisible block after it to compare with.
    A ``:class: crontab`` block is a crontab line (Pygments has no crontab lexer)."""
    if option(example, "class") == "crontab":
        return evaluate_crontab(example)
    example.namespace["_text"] = textwrap.dedent(str(example.parsed)).strip("\n")


def commands(text):
    lines = [line for line in textwrap.dedent(text).splitlines() if line.strip()]
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if not line.lstrip().startswith("#")]


def evaluate_console(example):
    for line in commands(str(example.parsed)):
        run_command(example, line)


def evaluate_crontab(example):
    for line in commands(str(example.parsed)):
        fields = line.split(None, 5)
        assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), \
            f"not a crontab line: {line!r}"
        run_command(example, fields[5])


def run_command(example, line):
    project = example.namespace["project"]
    argv = [readme_support.local_path(arg, project, BIN)
            for arg in shlex.split(line, comments=True)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(project))
    if argv[0] == "make":
        result = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    elif "--daemon" in argv:
        result = readme_support.run_daemon(argv, project, env)
    else:
        result = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 0, (f"README line {example.line}: {line!r} exited "
                                    f"{result.returncode}\n{result.stdout}\n{result.stderr}")


EVALUATORS = {"python": evaluate_python, "ini": evaluate_ini, "jinja": evaluate_jinja,
              "console": evaluate_console, "text": evaluate_text}


def parse_readme():
    return Document.parse(str(README), *[CodeBlockParser(language, evaluator)
                                          for language, evaluator in EVALUATORS.items()])


DOCUMENT = parse_readme()
EXAMPLES = list(DOCUMENT.examples())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The example project's directory: the working directory and on sys.path while
    the examples run (its modules are forgotten afterwards)."""
    path = tmp_path_factory.mktemp("readme_project")
    old_cwd, old_modules = os.getcwd(), set(sys.modules)
    os.chdir(path)
    sys.path.insert(0, str(path))
    DOCUMENT.namespace.clear()
    DOCUMENT.namespace.update(readme_support.helpers(path, README))
    DOCUMENT.namespace["previous_text_block"] = lambda: DOCUMENT.namespace["_text"]
    yield path
    os.chdir(old_cwd)
    sys.path.remove(str(path))
    for name in set(sys.modules) - old_modules:
        if getattr(sys.modules[name], "__file__", None) and \
                str(path) in str(sys.modules[name].__file__):
            del sys.modules[name]
    import transaction

    transaction.abort()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"line{e.line}")
def test_readme_example(example, project, caplog):
    caplog.set_level(logging.INFO)
    example.evaluate()


def test_readme_is_valid_restructuredtext():
    """As PyPI renders it (docutils, no Sphinx): no warning, no error."""
    import io

    import docutils.core

    warnings = io.StringIO()
    docutils.core.publish_doctree(README.read_text(), settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": warnings})
    assert warnings.getvalue() == ""


def test_every_example_has_a_runner():
    """No literal block (``::``) and no code block in a language nobody runs."""
    text = README.read_text()
    literal = [number for number, line in enumerate(text.splitlines(), 1)
               if line.rstrip().endswith("::") and not line.lstrip().startswith("..")]
    assert literal == [], f"literal blocks at lines {literal}: use a code-block with a language"
    languages = re.findall(r"^\s*\.\. code-block:: *(\S+)", text, re.M)
    assert set(languages) <= set(LANGUAGES), set(languages) - set(LANGUAGES)
    assert len(EXAMPLES) >= len(languages)
