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
import sys
import tempfile
import time

from pyramid_txmail.settings import parse_settings

#: Where the README's examples install the app; the project directory here.
APP_DIR = "/srv/app/"
VENV_BIN = "/srv/app/.venv/bin/"


#: The TCP ports the examples listen on (the relay, the web server), each replaced by a
#: free one while a document runs: other programs on this machine (the demo, another
#: run of these tests) may hold them.
EXAMPLE_PORTS = (8025, 6543)


def local_path(line, project, bin_dir):
    """``/srv/app/.venv/bin/txmail-qp`` → this venv's; ``/srv/app/x.ini`` → the project's."""
    return line.replace(VENV_BIN, f"{bin_dir}/").replace(APP_DIR, f"{project}/")


def free_ports():
    """``{example port: a free port of 127.0.0.1}`` for one document's run."""
    import socket

    ports = {}
    for example in EXAMPLE_PORTS:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports[example] = sock.getsockname()[1]
    return ports


def with_ports(text, ports):
    """``text`` with each example port replaced by its free port (see :data:`EXAMPLE_PORTS`)."""
    for example, free in ports.items():
        text = re.sub(rf"(?<![\d.]){example}(?!\d)", str(free), text)
    return text


def without_ports(text, ports):
    """The real output as the examples say it: each free port read as its example port."""
    for example, free in ports.items():
        text = re.sub(rf"(?<![\d.]){free}(?!\d)", str(example), text)
    return text


#: Variables of this test run that a reader's shell does not have: the project
#: directory is never on the path unless a command says so (``PYTHONPATH=. pserve``).
_NOT_IN_A_SHELL = ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHOME", "VIRTUAL_ENV")


def shell_env(bin_dir, installed=None):
    """The environment of a reader's shell with this venv activated: this process's,
    without PYTHONPATH and pytest's own variables, the venv's scripts first on PATH.
    ``installed``: the project directory of an application the chapter's reader has
    installed (``quick_start_app(installed=True)``), importable as if pip-installed."""
    env = {k: v for k, v in os.environ.items()
           if k not in _NOT_IN_A_SHELL and not k.startswith("PYTEST_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    if installed:
        env["PYTHONPATH"] = str(installed)
    return env


def listening(port):
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_a_port(ports, proc, what):
    """Wait until something listens on one of ``ports`` (a background command -- a relay,
    a server -- has started), or fail when the command exits first."""
    deadline = time.monotonic() + 60  # a generous bound on start-up, not a measurement
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: exited {proc.returncode}"
        if any(listening(port) for port in ports):
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: nothing listens on any of {ports} after 60 s")


class Background:
    """The long-running commands of a document (a relay, ``pserve``), as the reader runs
    them in another terminal: started in the project directory, stopped (SIGTERM) when
    the document ends; ``output(i)`` is what the i-th printed so far."""

    def __init__(self):
        self.procs = []

    def start(self, line, project, env, ports, where):
        free = [port for port in ports if not listening(port)]
        log = open(project / f".background-{len(self.procs)}.log", "w+")
        # PYTHONUNBUFFERED: each line shows at once, as on the reader's terminal
        proc = subprocess.Popen(["bash", "-c", line], cwd=project,
                                env=dict(env, PYTHONUNBUFFERED="1"), stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        proc.log = log
        self.procs.append(proc)
        try:
            wait_for_a_port(free, proc, where)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output(-1)}") from None

    def output(self, index):
        log = self.procs[index].log
        log.flush()
        return pathlib.Path(log.name).read_text()

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: bash and its command
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.log.close()
        self.procs = []


class _Collect(logging.Handler):
    def __init__(self, level=logging.WARNING):
        super().__init__(level)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def check_mail_settings(section, where):
    """The ``mail.*`` keys of an ini section parse, with no warning of pyramid_txmail
    (no unknown key, no unsafe value)."""
    if not any(k.startswith("mail.") for k in section):
        return
    handler = _Collect()
    logger = logging.getLogger("pyramid_txmail")
    logger.addHandler(handler)
    try:
        parse_settings({k: v for k, v in section.items() if k != "here"})
    finally:
        logger.removeHandler(handler)
    assert handler.records == [], f"{where}: {handler.records}"


def check_includes(section, where):
    """An app configured with these settings (``pyramid.includes`` and all) starts, and
    pyramid_txmail logs no warning while it does (a snippet the reader copies must not
    greet them with one: a missing ``mail.delivery``, an unsafe combination...)."""
    from pyramid.config import Configurator

    settings = {k: v for k, v in section.items() if k != "here"}
    handler = _Collect()
    logger = logging.getLogger("pyramid_txmail")
    logger.addHandler(handler)
    try:
        Configurator(settings=settings).make_wsgi_app()
    except Exception as exc:
        raise AssertionError(f"{where}: the app does not start: {exc!r}") from exc
    finally:
        logger.removeHandler(handler)
    assert handler.records == [], f"{where}: pyramid_txmail warns: {handler.records}"


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
                            start_new_session=True,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.monotonic() + 60  # a generous bound on start-up, not a measurement
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            output.append(line)
            if started in line:
                os.killpg(proc.pid, signal.SIGTERM)
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


def helpers(project, document, root, namespace):
    """Fill ``namespace``, the one a document's python blocks start with.  ``named_block(name)``
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

    def quick_start_app(installed=False):
        """The Quick start's files (docs/getting-started.rst: ``development.ini``,
        ``myapp/__init__.py``) in this project, and its spool, which the app creates
        when it starts: what a chapter that builds on the Quick start takes as given.
        ``installed``: the reader's application is installed in the venv (``pip install
        -e .``, as a deployed one is), so every console command can import it -- here
        by the project directory on their PYTHONPATH.  A chapter whose reader has only
        the files (the quick start itself, testing) does not say so."""
        from pyramid.paster import get_app

        chapter = root / "docs" / "getting-started.rst"
        for name in ("development.ini", "myapp/__init__.py"):
            write_file(name, with_ports(named_block(chapter, name), namespace["_ports"]))
        get_app(str(project / "development.ini"))
        if installed:
            namespace["_installed"] = project

    def relay_running():
        """The relay a chapter's reader already has, at the Quick start's ``mail.host``
        and ``mail.port`` (8025): aiosmtpd's printing relay, as the README starts it,
        left running until the document ends; returns the index of its output for
        ``background_output``."""
        background = namespace["_background"]
        background.start(f"python -m aiosmtpd -n -l localhost:{namespace['_ports'][8025]}",
                         project, shell_env(pathlib.Path(sys.executable).parent),
                         [namespace["_ports"][8025]], "the relay at mail.port")
        return len(background.procs) - 1

    def relay_received(ini, script=None, log=None):
        """Run ``txmail-qp INI`` as the example shows it, with a local relay at its
        ``mail.host`` (a copy of the ini beside it that names the relay's port; ``script``
        its replies, see tests/smtpserver.py); return what the relay received.  ``log``:
        a list that gets what txmail-qp wrote on stderr (its log)."""
        with local_relay(script) as relay:
            copy = project / f"relay-{ini}"
            text = re.sub(r"^mail\.port = .*\n", "", (project / ini).read_text(), flags=re.M)
            copy.write_text(re.sub(r"^mail\.host = .*$",
                                   f"mail.host = {relay.host}\nmail.port = {relay.port}",
                                   text, count=1, flags=re.M))
            qp = pathlib.Path(sys.executable).parent / "txmail-qp"
            result = subprocess.run([str(qp), str(copy)], cwd=project, capture_output=True,
                                    text=True, timeout=120,
                                    env=dict(os.environ, PYTHONPATH=str(project)))
            assert result.returncode == 0, result.stdout + result.stderr
            if log is not None:
                log.append(result.stderr)
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

    namespace.update({"project": project, "write_file": write_file,
            "log_lines": log_lines, "spool_messages": spool_messages,
            "relay_received": relay_received, "quick_start_app": quick_start_app,
            "relay_running": relay_running,
            "local_relay": local_relay,
            "memory_request": memory_request,
            "dead_letter": lambda path, name, message_id: dead_letter(
                project, path, name, message_id, relay_received),
            "claimed": lambda path, name, message_id: claimed(project, path, name, message_id),
            "named_block": lambda name, other=None: named_block(
                root / other if other else document, name)})
    return namespace


def local_relay(script=None):
    """A real SMTP server on 127.0.0.1 (tests/smtpserver.py), as a context manager:
    ``relay.host``, ``relay.port``, ``relay.messages``."""
    from .smtpserver import SMTPServer

    return SMTPServer(script)


def dead_letter(project, path, name, message_id, relay_received):
    """A dead letter named ``name`` in the spool at ``path``, made as ``txmail-qp`` makes
    one: queued (under that name, so that the examples can show it), then refused with a
    550 by a relay, in a real pass over ``production.ini`` (whose spool ``path`` is)."""
    from pyramid_txmail.queue.maildir.spool import Spool

    spool = Spool(str(project / path))
    data = (f"From: site@example.com\nTo: bob@example.org\nSubject: Welcome\n"
            f"Message-ID: {message_id}\n\nHello\n").encode()
    tmp = spool.write_tmp("site@example.com", ["bob@example.org"], data)
    os.rename(pathlib.Path(spool.path, "tmp", tmp), pathlib.Path(spool.path, "new", name))
    assert relay_received("production.ini", {"rcpt": "550 5.1.1 no such user"}) == []
    assert pathlib.Path(spool.path, "failed", name).exists()


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
