"""Helpers for tests/test_readme.py: what the examples of README.rst and docs/*.rst
take as given.

The names returned by :func:`helpers` are the namespace each document's python
blocks start with; the invisible blocks (``.. invisible-code-block: python``) use
them to set up a ``request`` or a ``registry``, to write the files a chapter takes
from another (``named_block``), and to check what an example did.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import select
import signal
import subprocess
import tempfile
import time

from pyramid_txmail.settings import parse_settings

#: Where the README's examples install the app; the project directory here.
APP_DIR = "/srv/app/"
VENV_BIN = "/srv/app/.venv/bin/"


def local_path(arg, project, bin_dir):
    """``/srv/app/.venv/bin/txmail-qp`` → this venv's; ``/srv/app/x.ini`` → the project's."""
    if arg.startswith(VENV_BIN):
        return str(bin_dir / arg[len(VENV_BIN):])
    if arg.startswith(APP_DIR):
        return str(project / arg[len(APP_DIR):])
    return arg


class _Collect(logging.Handler):
    def __init__(self, level=logging.WARNING):
        super().__init__(level)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def check_mail_settings(section, where):
    """The ``mail.*`` keys of an ini section parse, with no warning (no unknown key)."""
    if not any(k.startswith("mail.") for k in section):
        return
    handler = _Collect()
    logger = logging.getLogger("pyramid_txmail.settings")
    logger.addHandler(handler)
    try:
        parse_settings({k: v for k, v in section.items() if k != "here"})
    finally:
        logger.removeHandler(handler)
    assert handler.records == [], f"{where}: {handler.records}"


def check_includes(section, where):
    """An app configured with these settings (``pyramid.includes`` and all) starts."""
    from pyramid.config import Configurator

    settings = {k: v for k, v in section.items() if k != "here"}
    try:
        Configurator(settings=settings).make_wsgi_app()
    except Exception as exc:
        raise AssertionError(f"{where}: the app does not start: {exc!r}") from exc


def check_postfix_main_cf(text, postconf):
    """Postfix's own ``postconf`` reads the README's main.cf without a warning."""
    with tempfile.TemporaryDirectory() as config:
        pathlib.Path(config, "main.cf").write_text(text)
        pathlib.Path(config, "master.cf").write_text("")
        result = subprocess.run(
            [str(postconf), "-c", config, "-n"], capture_output=True, text=True, timeout=30,
            env=dict(os.environ, LD_LIBRARY_PATH=str(postconf.parent.parent / "lib/postfix")))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    return None


def check_output(shown, actual, project, where):
    """A console example's output is the command's real output: ``...`` stands for
    what changes from run to run, whitespace runs (a wrapped line) compare equal, and
    the project directory is ``/srv/app`` as the examples call it."""
    import doctest

    actual = actual.replace(str(project) + "/", APP_DIR)
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert checker.check_output(shown, actual, flags), (
        f"{where}: the output shown is not the real one\n--- shown\n{shown}--- real\n{actual}")


def run_daemon(argv, project, env, started="daemon started"):
    """Run ``txmail-qp ... --daemon`` until it logs that it started, then SIGTERM it."""
    proc = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.monotonic() + 60  # a generous bound on start-up, not a measurement
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            output.append(line)
            if started in line:
                proc.send_signal(signal.SIGTERM)
                break
    else:
        proc.kill()
    out, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(output) + out, "")


def block_file_name(options):
    """The file a code block is: ``:caption:`` in docs/ (Sphinx), ``:name:`` in
    README.rst (docutils' code directive, which PyPI renders, has no caption)."""
    return (options.get("caption") or options.get("name") or "").strip()


def named_block(document, name):
    """The text of the code block of ``document`` that is the file ``name``."""
    text = document.read_text()
    match = re.search(r"^\.\. code-block:: \w+\n((?: +:\w+:.*\n)*?) +:(?:name|caption): " +
                      re.escape(name) + r"\n((?: +:\w+:.*\n)*)\n((?: {4}.*\n|\n)+)", text, re.M)
    assert match, f"no block in {document.name} that is the file {name}"
    return re.sub(r"^ {4}", "", match.group(3), flags=re.M).strip("\n") + "\n"


def labels(text):
    """The Sphinx labels a document defines: ``.. _label:`` targets and ``:name:``
    options, lower-cased as Sphinx compares them."""
    found = re.findall(r"^\.\. _([^:`]+):\s*$", text, re.M)
    found += re.findall(r"^\s+:name:\s*(\S.*?)\s*$", text, re.M)
    return [label.lower() for label in found]


def helpers(project, document, root):
    """The namespace a document's python blocks start with.  ``named_block(name)``
    reads a block of this document; ``named_block(name, "docs/getting-started.rst")``
    one of another (a chapter's set-up copies the files it builds on)."""

    def write_file(name, content):
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def spool_messages(path, state="new"):
        """The Message-IDs queued in the spool at ``path`` (relative to the project)."""
        from pyramid_txmail.queue.maildir import spool_admin
        from pyramid_txmail.queue.maildir.spool import Spool

        return sorted(m.message_id for m in spool_admin.messages(Spool(str(project / path)),
                                                                 (state,)))

    def memory_request(*routes, **settings):
        """A request of an app with memory delivery (and pyramid_jinja2), in a
        transaction begun on ``request.tm``; returns ``(request, outbox)``."""
        from pyramid import testing

        import pyramid_txmail.testing

        config = testing.setUp(settings={"pyramid.includes": ""})
        config.include("pyramid_jinja2")
        for name, pattern in routes:
            config.add_route(name, pattern)
        outbox = pyramid_txmail.testing.setUp(config, {
            "mail.default_sender": "Site <site@example.com>", **settings})
        request = pyramid_txmail.testing.dummy_request()
        request.tm.begin()
        return request, outbox

    def run_pytest(path, passed):
        """Run the test file ``path`` of the project with pytest, in a subprocess."""
        import sys

        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 path], cwd=project, capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, PYTHONPATH=str(project)))
        assert result.returncode == 0 and f"{passed} passed" in result.stdout, \
            result.stdout + result.stderr

    def quick_start_app():
        """The Quick start's files (docs/getting-started.rst: ``development.ini``,
        ``myapp/__init__.py``) in this project, and its spool, which the app creates
        when it starts: what a chapter that builds on the Quick start takes as given."""
        from pyramid.paster import get_app

        chapter = root / "docs" / "getting-started.rst"
        for name in ("development.ini", "myapp/__init__.py"):
            write_file(name, named_block(chapter, name))
        get_app(str(project / "development.ini"))

    def relay_received(ini, script=None):
        """Run ``txmail-qp INI`` as the example shows it, with a local relay at its
        ``mail.host`` (a copy of the ini beside it that names the relay's port; ``script``
        its replies, see tests/smtpserver.py); return what the relay received."""
        import sys

        with local_relay(script) as relay:
            copy = project / f"relay-{ini}"
            copy.write_text(re.sub(r"^mail\.host = .*$",
                                   f"mail.host = {relay.host}\nmail.port = {relay.port}",
                                   (project / ini).read_text(), count=1, flags=re.M))
            qp = pathlib.Path(sys.executable).parent / "txmail-qp"
            result = subprocess.run([str(qp), str(copy)], cwd=project, capture_output=True,
                                    text=True, timeout=120,
                                    env=dict(os.environ, PYTHONPATH=str(project)))
            assert result.returncode == 0, result.stdout + result.stderr
            return list(relay.messages)

    @contextlib.contextmanager
    def log_lines(name, level=logging.INFO):
        """Collect the messages logged under ``name`` (at ``level`` or above)."""
        handler = _Collect(level)
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            yield handler.records
        finally:
            logger.removeHandler(handler)

    return {"project": project, "write_file": write_file, "run_pytest": run_pytest,
            "log_lines": log_lines, "spool_messages": spool_messages,
            "relay_received": relay_received, "quick_start_app": quick_start_app,
            "local_relay": local_relay,
            "memory_request": memory_request,
            "dead_letter": lambda path, name, message_id: dead_letter(project, path, name,
                                                                      message_id),
            "claimed": lambda path, name, message_id: claimed(project, path, name, message_id),
            "named_block": lambda name, other=None: named_block(
                root / other if other else document, name)}


def local_relay(script=None):
    """A real SMTP server on 127.0.0.1 (tests/smtpserver.py), as a context manager:
    ``relay.host``, ``relay.port``, ``relay.messages``."""
    from .smtpserver import SMTPServer

    return SMTPServer(script)


def dead_letter(project, path, name, message_id):
    """A dead letter named ``name`` in the spool at ``path``, as ``txmail-qp`` leaves one."""
    from pyramid_txmail.queue.maildir.queue_state import dead_letter as dead_meta
    from pyramid_txmail.relay.result import PERMANENT, RecipientResult
    from pyramid_txmail.queue.maildir.spool import Spool

    spool = Spool(str(project / path))
    data = (f"From: site@example.com\nTo: bob@example.org\nSubject: Welcome\n"
            f"Message-ID: {message_id}\n\nHello\n").encode()
    refused = [RecipientResult("bob@example.org", PERMANENT, 550, "5.1.1 no such user")]
    now = time.time()
    attempt = {"attempt": 1, "time": now, "results": [r.as_dict() for r in refused]}
    entry = spool.dead_letter_copy("site@example.com", ["bob@example.org"], data, dead_meta(
        {"queued_at": now, "attempts": 1, "first_attempt": now, "last_attempt": now,
         "history": [attempt]}, message_id, refused,
        "permanent failure: bob@example.org: 550 5.1.1 no such user", now, None))
    failed, meta = pathlib.Path(spool.path, "failed"), pathlib.Path(spool.path, "meta")
    os.rename(failed / entry.name, failed / name)
    os.rename(meta / (entry.name + ".json"), meta / (name + ".json"))


def claimed(project, path, name, message_id):
    """A message named ``name`` claimed by this (live) process, as a ``txmail-qp``
    sending it holds it; returns the function that lets it go."""
    from pyramid_txmail.queue.maildir.spool import Spool

    spool = Spool(str(project / path))
    data = f"To: carol@example.org\nSubject: Stuck\nMessage-ID: {message_id}\n\nHi\n".encode()
    tmp = spool.write_tmp("site@example.com", ["carol@example.org"], data)
    os.rename(pathlib.Path(spool.path, "tmp", tmp), pathlib.Path(spool.path, "new", name))
    entry = spool.claim("new", name)
    return entry.claim.close
