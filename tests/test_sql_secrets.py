"""No secret of mail.queue_url reaches any output: neither the netloc's password
nor one given as a query parameter (``?password=``, ``?sslpassword=``...),
which libpq accepts and SQLAlchemy's ``hide_password`` does not mask."""
from __future__ import annotations

import logging
import socket

import pytest

from pyramid_txmail.mailer.sqloutbox import _shown
from pyramid_txmail.queue.sql.engine import where
from pyramid_txmail.scripts import qp as qp_cli
from pyramid_txmail.scripts import queue as queue_cli
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.util.shown_url import scrub, shown_url

SECRET = "QuerySecret1"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def urls(port):
    base = f"postgresql+psycopg://txmail@127.0.0.1:{port}/app"
    return {"netloc": f"postgresql+psycopg://txmail:{SECRET}@127.0.0.1:{port}/app",
            "query": f"{base}?password={SECRET}",
            "sslpassword": f"{base}?sslpassword={SECRET}&sslmode=prefer",
            "passfile": f"{base}?passfile=/etc/{SECRET}",
            "both": f"postgresql://txmail:{SECRET}x@127.0.0.1:{port}/app?password={SECRET}"}


@pytest.mark.parametrize("form", ["netloc", "query", "sslpassword", "passfile", "both"])
def test_every_rendering_of_the_url_masks_its_secrets(form):
    url = urls(5432)[form]
    for text in (shown_url(url), where(url), _shown(__import__("sqlalchemy").engine.make_url(url)),
                 scrub(f"failed: {SECRET if form != 'passfile' else '/etc/' + SECRET}", url)):
        assert SECRET not in text, text
        assert "127.0.0.1" in text or "failed" in text


def test_settings_errors_mask_the_query_password():
    for bad in (f"mysql://u@h/db?password={SECRET}", f"mysql://u:{SECRET}@h/db?sslpassword={SECRET}"):
        with pytest.raises(Exception) as info:
            parse_settings({"mail.queue_url": bad})
        assert SECRET not in str(info.value) and "mail.queue_url" in str(info.value)


def ini(tmp_path, url, name):
    path = tmp_path / name
    path.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_url = {url}\n"
                    "mail.delivery = queue\nmail.default_sender = a@example.com\n"
                    # txmail-qp runs in this process, which may have threads: no fork
                    "mail.processes = 1\n")
    return str(path)


@pytest.fixture
def logging_restored():
    """The scripts' main() set up logging for a process (their ini's logging, with
    ``disable_existing_loggers`` and wrapped formatters); run in-process here, that must
    not leak into later tests (pyramid_txmail's loggers were left disabled for caplog)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {name: (lg.disabled, lg.propagate, lg.level, lg.handlers[:])
               for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    formatters = [(h, h.formatter) for h in handlers]
    yield
    root.handlers[:], root.level = handlers, level
    for handler, formatter in formatters:
        handler.setFormatter(formatter)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            disabled, propagate, lvl, hs = loggers.get(name, (False, True, logging.NOTSET, []))
            lg.disabled, lg.propagate, lg.level, lg.handlers[:] = disabled, propagate, lvl, hs


@pytest.mark.parametrize("form", ["netloc", "query", "sslpassword", "both"])
@pytest.mark.usefixtures("logging_restored")
def test_txmail_queue_and_txmail_qp_never_print_or_log_it(tmp_path, capsys, caplog, form):
    url = urls(closed_port())[form]
    path = ini(tmp_path, url, f"{form}.ini")
    caplog.set_level(logging.DEBUG)
    seen = []
    for argv in (["status"], ["-v", "status"], ["list"], ["show", "1"]):
        code = queue_cli.main([path, *argv])
        out, err = capsys.readouterr()
        assert code != 0
        seen.append(out + err)
    code = qp_cli.main([path])
    out, err = capsys.readouterr()
    seen.append(out + err)
    seen.append(caplog.text)
    seen.extend(repr(r.args) + str(r.exc_text) for r in caplog.records)
    assert any("127.0.0.1" in text for text in seen)
    for text in seen:
        assert SECRET not in text, text
