"""Every code example in README.rst and docs/*.rst runs, as written, in document order
(issues 12 and 16).

Each document runs on its own: its own namespace, its own project directory, in
any order and alone (``pytest tests/test_readme.py -k queues`` runs
docs/queues.rst, ``-k frontpage`` README.rst; a test id is ``STEM-lineN``).  So a chapter
carries, in invisible blocks, the set-up it needs (e.g. the Quick start's files, copied
from docs/getting-started.rst with ``named_block``).

Sybil finds the examples; each ``.. code-block::`` language has its evaluator:

``python``
    run in one namespace shared by the whole document.  A block that names a
    file (``myapp/__init__.py``) is that file: it is written into the project
    directory instead, and later blocks import it.  The file name is the block's
    ``:name:`` in README.rst (docutils' code directive, which PyPI renders, has no
    ``:caption:``) and its ``:caption:`` in docs/ (Sphinx shows it above the
    block; a ``:name:`` there is a label, global to the site, and the same file in
    two chapters would be a duplicate label, which fails the ``-W`` build).
``ini``
    written to the file it names, if any; every section's ``mail.*``
    keys go through ``parse_settings`` with no warning (a typo is a failure); a
    systemd unit's ``ExecStart=`` runs as a console command (below); Postfix's
    ``main.cf`` is checked by Postfix's own ``postconf`` (no unused parameter).
``jinja``
    written to the file its ``:name:`` names (the templates the python blocks render).
``console``
    each command (after ``$ `` when the block shows output) runs as the reader's
    shell runs it (issue 16): ``bash -c`` in the project directory, this venv's
    scripts first on PATH, and nothing of this test run's environment -- the project
    directory is NOT on PYTHONPATH unless the command says so (``PYTHONPATH=. pserve
    development.ini``) or the chapter's reader has their app installed
    (``quick_start_app(installed=True)``); it must exit 0.  What it prints (stdout
    and stderr, as on a terminal) is its output, and the lines shown after a ``$ ``
    command must match it (doctest's ``ELLIPSIS`` -- ``...`` stands for what changes
    from run to run, such as an age -- and ``NORMALIZE_WHITESPACE``, so a long line
    may be wrapped; the project directory reads as ``/srv/app``).  A command shown
    without output must print nothing, unless ``output_not_shown`` says why:
    ``make TARGET`` runs as ``make -n TARGET`` in the repository (running it is what
    this suite is); ``txmail-qp ... --daemon`` runs until it logs that it started,
    then gets SIGTERM and must exit 0; ``pip install`` prints what the venv has.  A
    block with ``:class: background`` is what the reader leaves running in another
    terminal (a relay, ``pserve``): started, waited for until it listens, stopped
    when the document ends; ``background_output(i)`` is what it printed.  The
    examples' ports (8025, 6543) are free ones here, in commands and ini files alike.
    ``/srv/app/`` -- where the examples install the app -- is the project
    directory, ``/srv/app/.venv/bin/`` this venv's scripts.
``text``
    output and listings: nothing to run (an invisible block after one may compare
    it with what the code says).  One with ``:class: crontab`` is a crontab line:
    the five time fields are checked and the command runs as above.

``.. invisible-code-block: python`` blocks (not rendered) provide what the reader
already has (a ``request``, a ``registry``, a relay, an installed app) and check what an
example did; they never perform a step the reader needs (creating a directory or a
table, running a command, sending the mail): that is a visible example.  The project
directory is a fresh temporary directory, the working directory while the
examples run.  A literal block (``::``) or a language without an evaluator fails
``test_every_example_has_a_runner``: nothing in the documentation goes unchecked.
"""
from __future__ import annotations

import configparser
import logging
import os
import pathlib
import re
import shlex
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
#: Every document whose examples run: the front page and the Sphinx chapters.
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.rst"))]
BIN = pathlib.Path(sys.executable).parent
POSTCONF = ROOT / ".deps/postfix/usr/sbin/postconf"
LANGUAGES = ("python", "ini", "jinja", "console", "text")


def option(example, name):
    return (example.region.lexemes.get("options") or {}).get(name, "").strip()


def file_name(example):
    """The file a block is: its ``:caption:`` (docs/) or ``:name:`` (README.rst)."""
    return readme_support.block_file_name(example.region.lexemes.get("options") or {})


def where(example):
    """``docs/queues.rst line 42``: where an example is, for a failure's message."""
    return f"{pathlib.Path(example.path).relative_to(ROOT)} line {example.line}"


def project_file(example, name=None):
    """The file a named block is, inside the project directory."""
    name = name or file_name(example)
    return example.namespace["project"] / name.lstrip("/")


def write_named(example):
    """Write the file a block is; the examples' ports become this run's free ones."""
    path = project_file(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(readme_support.with_ports(textwrap.dedent(str(example.parsed)),
                                              example.namespace["_ports"]))
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
        section_where = f"{where(example)} [{section}]"
        readme_support.check_mail_settings(dict(parser[section]), section_where)
        if "pyramid.includes" in parser[section]:  # the app these settings make starts
            readme_support.check_includes(dict(parser[section]), section_where)
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
    """``(command, output shown or None)`` for each command of a console block."""
    lines = [line for line in textwrap.dedent(text).splitlines() if line.strip()]
    if not any(line.startswith("$ ") for line in lines):
        return [(line, None) for line in lines if not line.lstrip().startswith("#")]
    shown = []
    for line in lines:
        if line.startswith("$ "):
            shown.append((line[2:], []))
        else:
            shown[-1][1].append(line)
    return [(command, "\n".join(output) + "\n" if output else None)
            for command, output in shown]


#: Console commands shown without their output, and why: what runs until stopped (a
#: ``--daemon``, a block with ``:class: background``), ``make`` (run as ``make -n``) and
#: ``pip install`` (its output depends on what the reader's venv has).  Any other command
#: of a block without ``$ `` must print nothing; one that prints shows its output.
def output_not_shown(line):
    words = line.split()
    return ("--daemon" in words or words[:1] == ["make"] or words[:2] == ["pip", "install"]
            or words[:4] == ["python", "-m", "pip", "install"])


def evaluate_console(example):
    background = option(example, "class") == "background"
    for line, output in commands(str(example.parsed)):
        if background:
            assert output is None, f"{where(example)}: a background command shows no output"
            start_background(example, line)
            continue
        result = run_command(example, line)
        if output is not None:
            readme_support.check_output(output, result.stdout, example.namespace["project"],
                                        f"{where(example)}: {line!r}")
        elif not output_not_shown(line):  # shown with no output: it prints none
            assert result.stdout == "", (
                f"{where(example)}: {line!r} prints something; show it (``$ `` and its "
                f"output) or say why not (see output_not_shown)\n{result.stdout}")


def evaluate_crontab(example):
    for line, _ in commands(str(example.parsed)):
        fields = line.split(None, 5)
        assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), \
            f"not a crontab line: {line!r}"
        run_command(example, fields[5])


def shell_line(example, line):
    """The command as this machine runs it: ``/srv/app`` is the project directory, the
    examples' ports are free ones (readme_support.EXAMPLE_PORTS)."""
    namespace = example.namespace
    return readme_support.with_ports(
        readme_support.local_path(line, namespace["project"], BIN), namespace["_ports"])


def start_background(example, line):
    """A command the reader leaves running in another terminal (``:class: background``)."""
    namespace = example.namespace
    env = readme_support.shell_env(BIN, namespace.get("_installed"))
    namespace["_background"].start(shell_line(example, line), namespace["project"], env,
                                   namespace["_ports"].values(), where(example))


def run_command(example, line):
    """Run ``line`` as the reader's shell does: bash, in the project directory, with this
    venv activated and nothing else (the project is not on PYTHONPATH unless the line
    says so).  What it prints on stdout and stderr is its output, as on a terminal."""
    project = example.namespace["project"]
    env = readme_support.shell_env(BIN, example.namespace.get("_installed"))
    shell = shell_line(example, line)
    if shell.split()[0] == "make":
        make = ["make", "-n", *shlex.split(shell, comments=True)[1:]]
        result = subprocess.run(make, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
    elif "--daemon" in shell.split():
        result = readme_support.run_daemon(["bash", "-c", shell], project, env)
    else:
        result = subprocess.run(["bash", "-c", shell], cwd=project, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                timeout=120)
        result.stdout = readme_support.without_ports(result.stdout,
                                                     example.namespace["_ports"])
    assert result.returncode == 0, (f"{where(example)}: {line!r} exited "
                                    f"{result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


EVALUATORS = {"python": evaluate_python, "ini": evaluate_ini, "jinja": evaluate_jinja,
              "console": evaluate_console, "text": evaluate_text}


def parse(path):
    return Document.parse(str(path), *[CodeBlockParser(language, evaluator)
                                        for language, evaluator in EVALUATORS.items()])


PARSED = {path: parse(path) for path in DOCUMENTS}
EXAMPLES = [example for document in PARSED.values() for example in document.examples()]


class Project:
    """The example project of the document being run: a fresh directory, the working
    directory and on sys.path while that document's examples run; its modules are
    forgotten when the next document starts (or the module's tests end)."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.document = self.path = None

    def enter(self, document):
        if document is self.document:
            return
        self.leave()
        self.document = document
        self.path = self.tmp_path_factory.mktemp(pathlib.Path(document.path).stem + "_project")
        self.old_cwd, self.old_modules = os.getcwd(), set(sys.modules)
        os.chdir(self.path)
        sys.path.insert(0, str(self.path))
        document.namespace.clear()
        readme_support.helpers(self.path, pathlib.Path(document.path), ROOT, document.namespace)
        document.namespace["previous_text_block"] = lambda: document.namespace["_text"]
        document.namespace["_ports"] = readme_support.free_ports()
        document.namespace["_background"] = background = readme_support.Background()
        #: what the i-th background command (a relay, pserve) has printed so far
        document.namespace["background_output"] = background.output

    def leave(self):
        if self.document is None:
            return
        self.document.namespace["_background"].stop()
        os.chdir(self.old_cwd)
        sys.path.remove(str(self.path))
        for name in set(sys.modules) - self.old_modules:
            if getattr(sys.modules[name], "__file__", None) and \
                    str(self.path) in str(sys.modules[name].__file__):
                del sys.modules[name]
        import transaction

        transaction.abort()
        self.document = self.path = None


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    projects = Project(tmp_path_factory)
    yield projects
    projects.leave()


def document_id(path):
    """A chapter's stem (``getting-started``); README.rst is ``frontpage`` (``-k`` matches
    this module's name, so ``-k README`` would select every document)."""
    path = pathlib.Path(path)
    return "frontpage" if path == README else path.stem


def example_id(example):
    """``getting-started-line52``: ``-k getting-started`` runs one chapter alone."""
    return f"{document_id(example.path)}-line{example.line}"


@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_document_example(example, projects, caplog):
    caplog.set_level(logging.INFO)
    projects.enter(example.document)
    example.evaluate()


def test_readme_is_valid_restructuredtext():
    """As PyPI renders it (docutils, no Sphinx): no warning, no error."""
    import io

    import docutils.core

    warnings = io.StringIO()
    docutils.core.publish_doctree(README.read_text(), settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": warnings})
    assert warnings.getvalue() == ""


@pytest.mark.parametrize("path", DOCUMENTS, ids=document_id)
def test_every_example_has_a_runner(path):
    """No literal block (``::``) and no code block in a language nobody runs."""
    text = path.read_text()
    literal = [number for number, line in enumerate(text.splitlines(), 1)
               if line.rstrip().endswith("::") and not line.lstrip().startswith("..")]
    assert literal == [], f"literal blocks at lines {literal}: use a code-block with a language"
    languages = re.findall(r"^\s*\.\. code-block:: *(\S+)", text, re.M)
    assert set(languages) <= set(LANGUAGES), set(languages) - set(LANGUAGES)
    assert len(list(PARSED[path].examples())) >= len(languages)


def test_every_document_is_run():
    """README.rst and the chapters: a chapter added to docs/ is picked up here."""
    assert {path.name for path in DOCUMENTS} >= {
        "README.rst", "getting-started.rst", "sending.rst", "transactions.rst", "queues.rst",
        "direct.rst", "testing.rst", "devtools.rst", "migration.rst", "operating.rst",
        "postfix.rst", "security.rst"}


def test_no_label_twice_in_the_docs():
    """A label (``.. _name:``, a block's ``:name:``) is global to the Sphinx site: the
    same one twice is a duplicate-label warning, which fails the ``-W`` build.  Files are
    named by ``:caption:`` in docs/ (see the module's docstring)."""
    seen = {}
    for path in DOCUMENTS[1:]:
        for label in readme_support.labels(path.read_text()):
            seen.setdefault(label, []).append(path.name)
    assert {label: where for label, where in seen.items() if len(where) > 1} == {}


def bench_figures(results):
    """The figures README.rst quotes, as bench/RESULTS.md (the last full run) has them."""
    def find(pattern):
        match = re.search(pattern, results, re.M)
        assert match, f"bench/RESULTS.md has no line matching {pattern!r}"
        return match.groups()

    [txmail_us] = find(r"^\| txmail \| (\d+) \|")
    [mailer_us] = find(r"^\| pyramid_mailer \| (\d+) \|")
    concurrent, with_mail = find(r"^\| 8 concurrent requests: pyramid_txmail .*? = ([\d.]+x)"
                                 r" \(the mail built with Mail: .*? = ([\d.]+x)\)")
    [drain] = find(r"^\| drain with default settings.*\| ([\d.]+x) net of start-up")
    worst_leg, mailer_attachment = find(
        r"^\| peak memory for a 50 MiB attachment.*worst txmail leg ([\d.]+)x; "
        r"pyramid_mailer ([\d.]+x)")
    return {"durable commit": f"the durable commit costs {txmail_us} µs a message",
            "send_to_queue": f"``send_to_queue`` ({mailer_us} µs)",
            "concurrent": f"served at {concurrent} pyramid_mailer's rate",
            "concurrent with Mail": f"{with_mail} when the view builds it with our ``Mail``",
            "drain": f"{drain} as fast as repoze.sendmail's ``qp``",
            "attachment": ("adds no measurable memory" if float(worst_leg) < 0.05 else
                           f"adds {worst_leg}x its size"),
            "pyramid_mailer attachment": f"peaks at {mailer_attachment} its size"}


def test_readme_figures_are_the_benchmarks():
    """README.rst's figures are bench/RESULTS.md's: a new run that changes one fails here
    until the README says the new figure (the chapters link to the benchmarks page)."""
    readme = " ".join(README.read_text().split())
    figures = bench_figures((ROOT / "bench" / "RESULTS.md").read_text())
    assert {what: text for what, text in figures.items() if text not in readme} == {}


@pytest.mark.parametrize("path", DOCUMENTS, ids=document_id)
def test_extras_are_quoted(path):
    """``pip install pyramid_txmail[toolbar]`` unquoted is a glob to zsh ("no matches
    found"): every extras spec the documents show is in quotes."""
    unquoted = re.findall(r"pip install (?:-\S+ )*([^'\"\s`]+\[[^\]]*\])", path.read_text())
    assert unquoted == []
