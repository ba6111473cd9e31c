"""Run the whole demo with one command and show one mail going through.

::

    python -m demo_app.run [--ini demo_app/development.ini] [--check]

starts

* the development SMTP server (:mod:`demo_app.devsmtp`, in this process),
* the web application under waitress (``pserve INI`` in a child process),
* the queue processor, ``txmail-qp INI --daemon`` (a child process) -- see
  :mod:`demo_app.queue_runner`,

then signs up a sample user over HTTP (a new address each run, since the
database keeps its users) and waits until the welcome mail is in the inbox.
Without ``--check`` it keeps everything running until Ctrl-C (or SIGTERM),
which stops all of them and exits 0; with ``--check`` it exits 0 as soon as
the mail arrived (1 if it did not).

``--http-port``, ``--smtp-port``, ``--var`` and ``--db`` override the INI file:
the demo then writes a copy of it with those values into a temporary directory
and gives that copy to ``pserve`` and ``txmail-qp`` alike, so all three parts
agree on the ports, directories and database.  ``--db URL`` puts the app's
tables and the mail outbox (``sqlalchemy.url`` and ``mail.queue_url``) in the
database at URL, e.g. PostgreSQL: ``--db postgresql+psycopg://user@host/demo``.
"""
from __future__ import annotations

import argparse
import configparser
import email.policy
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from email.parser import BytesParser

import plaster

from demo_app.devsmtp import DevSMTPServer
from demo_app.queue_runner import (QueueRunnerError, find_qp, start_queue_processor,
                                   terminate)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INI = os.path.join(HERE, "development.ini")
SAMPLE_NAME = "Newcomer"


def sample_signup():
    """The form fields of the sample sign-up: a fresh address per run (emails are UNIQUE)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return {"name": SAMPLE_NAME, "email": f"newcomer-{stamp}-{os.getpid()}@example.org"}


class Stop(Exception):
    """Ctrl-C or SIGTERM: stop everything and exit 0."""


class DemoError(Exception):
    """Something a user can fix (a port in use, a missing script): exit 1 with the text."""


def say(text):
    print(text, flush=True)


# -- configuration ---------------------------------------------------------

def write_overridden_ini(ini, directory, http_port=None, smtp_port=None, var=None, db=None):
    """Copy ``ini`` into ``directory`` with ports, directories and database replaced.

    ``%(here)s`` is resolved against the original file's directory so the
    copy means the same as the original apart from the overrides.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep the keys' case
    with open(ini, encoding="utf-8") as fh:
        parser.read_file(fh)
    here = os.path.dirname(os.path.abspath(ini))
    for section in parser.sections():
        for key, value in parser.items(section, raw=True):
            if "%(here)s" in value or "%(__file__)s" in value:
                value = value.replace("%(here)s", here).replace(
                    "%(__file__)s", os.path.abspath(ini))
                parser.set(section, key, value)
    if smtp_port is not None:
        parser.set("app:main", "mail.port", str(smtp_port))
    if var is not None:
        var = os.path.abspath(var)
        if parser.has_option("app:main", "mail.queue_path"):
            parser.set("app:main", "mail.queue_path", os.path.join(var, "spool"))
        parser.set("app:main", "demo.inbox_path", os.path.join(var, "inbox"))
        if db is None:
            db = "sqlite:///" + os.path.join(var, "demo.sqlite")
    if db is not None:  # the app's tables and the mail outbox: one database
        parser.set("app:main", "sqlalchemy.url", db)
        if not parser.has_option("app:main", "mail.queue_path"):
            parser.set("app:main", "mail.queue_url", db)
    if http_port is not None:
        host = server_address(dict(parser.items("server:main", raw=True)))[0]
        for key in ("host", "port", "listen"):
            parser.remove_option("server:main", key)
        parser.set("server:main", "listen", f"{host}:{http_port}")
    path = os.path.join(directory, "demo.ini")
    with open(path, "w", encoding="utf-8") as fh:
        parser.write(fh)
    return path


def server_address(server_settings):
    """(host, port) from a waitress ``[server:main]`` section."""
    listen = server_settings.get("listen")
    if listen:
        first = listen.split()[0]
        host, _, port = first.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    return server_settings.get("host", "127.0.0.1"), int(server_settings.get("port", 6543))


def read_config(ini):
    loader = plaster.get_loader(ini, protocols=["wsgi"])
    app = loader.get_settings("app:main")
    missing = [k for k in ("mail.port", "demo.inbox_path", "sqlalchemy.url")
               if not app.get(k)]
    if not (app.get("mail.queue_url") or app.get("mail.queue_path")):
        missing.append("mail.queue_url (or mail.queue_path)")
    if missing:
        raise DemoError(f"{ini}: [app:main] needs {', '.join(missing)}")
    http_host, http_port = server_address(loader.get_settings("server:main"))
    if app.get("mail.queue_url"):
        queue = "the SQL outbox in " + _tidy_sqlite_url(app["mail.queue_url"])
    else:
        queue = "spool " + os.path.normpath(app["mail.queue_path"])
    return {
        "smtp_host": app.get("mail.host") or "127.0.0.1",
        "smtp_port": int(app["mail.port"]),
        "queue": queue,
        "inbox": os.path.normpath(app["demo.inbox_path"]),
        "database": _tidy_sqlite_url(app["sqlalchemy.url"]),
        "http_host": http_host,
        "http_port": http_port,
    }


def _tidy_sqlite_url(url):
    """``sqlite:////x/demo_app/../var/db`` -> ``sqlite:////x/var/db``, for the message only;
    another database's URL with its password hidden."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and len(url) > len(prefix):
        return prefix + os.path.normpath(url[len(prefix):])
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a bad URL: the app reports it when it starts
        return "(a database URL that does not parse)"


def check_port_free(host, port, what, flag):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # Like the servers themselves: a TIME_WAIT left by the last run is no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DemoError(f"cannot use {host}:{port} for the {what}: {exc.strerror}. "
                            f"Is the demo already running? Choose another port with {flag}.")


def child_env():
    """The environment for the children: ``demo_app`` importable from anywhere."""
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the parts -------------------------------------------------------------

def start_web(ini, env):
    command = [sys.executable, "-m", "pyramid.scripts.pserve", ini]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for_web(url, web, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise DemoError(f"the web server (pserve) exited with status {web.returncode}; "
                            "see its output above.")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            pass  # not listening yet
        time.sleep(0.2)
    raise DemoError(f"the web application did not answer at {url} within {timeout:.0f} s.")


def post_signup(form_url, fields):
    """POST the form like a browser; return the Message-ID from the thanks page's URL."""
    data = urllib.parse.urlencode(fields).encode("ascii")
    request = urllib.request.Request(form_url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            final_url = response.geturl()
    except urllib.error.HTTPError as exc:
        raise DemoError(f"posting the sample sign-up failed: HTTP {exc.code} from {form_url}")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DemoError(f"posting the sample sign-up to {form_url} failed: {exc}")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(final_url).query)
    message_ids = query.get("message_id")
    if not message_ids:
        raise DemoError(f"the sign-up did not redirect to the thanks page (ended at {final_url})")
    return message_ids[0]


def find_in_inbox(inbox, message_id):
    """The parsed message with this Message-ID in the inbox, or None."""
    try:
        names = sorted(os.listdir(inbox), reverse=True)
    except FileNotFoundError:
        return None
    parser = BytesParser(policy=email.policy.default)
    for name in names:
        if name.startswith(".") or not name.endswith(".eml"):
            continue
        try:
            with open(os.path.join(inbox, name), "rb") as fh:
                msg = parser.parse(fh, headersonly=True)
        except OSError:
            continue
        if str(msg.get("Message-ID", "")).strip() == message_id.strip():
            return msg
    return None


def wait_for_mail(inbox, message_id, timeout, queue):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = find_in_inbox(inbox, message_id)
        if msg is not None:
            return msg
        time.sleep(0.2)
    problem = queue.problem()
    hint = f" Last problem: {problem}." if problem else ""
    raise DemoError(f"the sample mail {message_id} did not arrive in {inbox} within "
                    f"{timeout:.0f} s.{hint}")


# -- main ------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m demo_app.run",
        description="Run the pyramid_txmail demo: a local SMTP inbox, the web app and "
                    "the queue processor; then send one sample mail through them. Ctrl-C "
                    "stops everything.")
    parser.add_argument("--ini", default=DEFAULT_INI,
                        help="the app's INI file (default: demo_app/development.ini)")
    parser.add_argument("--http-port", type=int,
                        help="port for the web app (default: from the INI file, 6543)")
    parser.add_argument("--smtp-port", type=int,
                        help="port for the development SMTP server (default: mail.port "
                             "from the INI file, 8025)")
    parser.add_argument("--var", metavar="DIR",
                        help="directory for the SQLite database (the app's and the mail "
                             "outbox's) and the inbox (default: from the INI file, var/demo)")
    parser.add_argument("--db", metavar="URL",
                        help="the app's tables and the mail outbox in this database instead, "
                             "e.g. postgresql+psycopg://user@localhost/demo")
    parser.add_argument("--check", action="store_true",
                        help="exit 0 once the sample mail arrived, 1 if it did not")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the sample mail (default: %(default)s)")
    return parser.parse_args(argv)


def _raise_stop(signum, frame):
    raise Stop()


def run(args):
    ini = os.path.abspath(args.ini)
    if not os.path.isfile(ini):
        raise DemoError(f"no such INI file: {args.ini}")
    tmpdir = None
    smtp = web = queue = None
    try:
        if any(v is not None for v in (args.http_port, args.smtp_port, args.var, args.db)):
            tmpdir = tempfile.mkdtemp(prefix="txmail-demo-")
            ini = write_overridden_ini(ini, tmpdir, args.http_port, args.smtp_port, args.var,
                                       args.db)
        config = read_config(ini)
        if config["smtp_port"] == config["http_port"]:
            raise DemoError(f"the web app and the SMTP server cannot share port "
                            f"{config['http_port']}: use different --http-port and --smtp-port.")
        check_port_free(config["smtp_host"], config["smtp_port"],
                        "development SMTP server", "--smtp-port")
        check_port_free(config["http_host"], config["http_port"], "web app", "--http-port")
        try:
            qp = find_qp()
        except QueueRunnerError as exc:
            raise DemoError(str(exc)) from None
        env = child_env()

        smtp = DevSMTPServer(config["inbox"], config["smtp_host"], config["smtp_port"]).start()
        say(f"demo: development SMTP server on {config['smtp_host']}:{config['smtp_port']}, "
            f"inbox {config['inbox']}")
        web = start_web(ini, env)
        say(f"demo: database {config['database']}")
        base = f"http://{config['http_host']}:{config['http_port']}/"
        wait_for_web(base, web, timeout=30)
        try:  # after the app is up: the app creates the queue, txmail-qp never does
            queue = start_queue_processor(qp, ini, env)
        except QueueRunnerError as exc:
            raise DemoError(str(exc)) from None
        say(f"demo: queue processor: {queue.describe()} ({config['queue']})")
        say("")
        say(f"Form: {base}   Inbox: {base}inbox   Mail preview: {base}_mail/")
        say("")
        sample = sample_signup()
        say(f"demo: signing up {sample['name']} <{sample['email']}> through the form ...")
        message_id = post_signup(base, sample)
        say(f"demo: queued {message_id}; waiting for it to arrive ...")
        msg = wait_for_mail(config["inbox"], message_id, args.timeout, queue)
        recipient = str(msg.get("X-Envelope-To") or msg.get("To"))
        say(f"Mail arrived: {msg.get('Subject')} to {recipient}")
        if args.check:
            return 0
        say("")
        say(f"demo: running. Open {base} to sign up, {base}inbox to read the mail. "
            "Ctrl-C stops everything.")
        while True:
            if web.poll() is not None:
                raise DemoError(f"the web server (pserve) exited with status {web.returncode}.")
            if queue.failed() is not None:
                raise DemoError(f"{queue.problem()}; see its output above.")
            time.sleep(0.5)
    finally:
        # A second Ctrl-C must not interrupt the clean-up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if queue is not None:
            queue.stop()
        if web is not None:
            terminate(web)
        if smtp is not None:
            smtp.stop()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    # Also when started where SIGINT is ignored (a background job): Ctrl-C or
    # kill -INT/-TERM always means "stop everything cleanly".
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        code = run(args)
    except (KeyboardInterrupt, Stop):
        say("\ndemo: stopped.")
        return 0
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr, flush=True)
        return 1
    if code == 0 and args.check:
        say("demo: check passed, everything stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
