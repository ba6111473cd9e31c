"""Every line txmail-queue and txmail-qp print or log is safe on a terminal, and
printing never ends the command (issue 15, outside probe findings 3, 4, 5, 10).

* non-UTF-8 spool file names (``surrogateescape``: ``\\udcff``) and lone
  surrogates read from a state file are escaped, not written raw (a C1 CSI
  byte 0x9b reached the terminal) and not a ``UnicodeEncodeError``;
* every format character (Unicode Cf: RLM U+200F, ALM U+061C, LRI..PDI...)
  that can reorder or hide text is escaped;
* a reader that goes away (``| head -1``) is a quiet exit 141, not
  "unexpected error: BrokenPipeError".
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
import unicodedata

from hypothesis import given, settings, strategies as st

from pyramid_txmail.scripts import queue_ops, queue_text
from pyramid_txmail.util.logformat import JsonFormatter, SafeFormatter
from pyramid_txmail.util.printable import printable

from .claims_support import QUEUE, make_spool, run, write_ini

ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF,
                                 blacklist_categories=()), max_size=40)
HOSTILE = st.one_of(ANY_TEXT, st.sampled_from([
    "\u200f", "\u061c", "\u202e", "\u2066x\u2069", "\ufeff", "\udcff\udc9b", "\ud800",
    "\x9b2J", "\x1b[2J", "a\nFAKE", "\U000e0041", "\u2028"]))


def _unsafe(text, keep="\n"):
    """The characters of ``text`` that must not reach a terminal or a log."""
    return [c for c in text if c not in keep and (
        unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp"))]


def test_the_format_characters_are_every_cf_of_this_python():
    """The written-out Cf ranges cover the running unicodedata's (a newer Python
    with new format characters fails here instead of printing them raw)."""
    missing = [f"U+{c:04X}" for c in range(0x110000)
               if unicodedata.category(chr(c)) == "Cf" and printable(chr(c)) == chr(c)]
    assert not missing


@given(HOSTILE)
def test_printable_leaves_nothing_that_drives_a_terminal(text):
    for one_line in (True, False):
        shown = printable(text, one_line)
        assert not _unsafe(shown, keep="" if one_line else "\n\t"), repr(shown)
        shown.encode("utf-8")  # strict: no surrogate left


def _record(msg, *args, **extra):
    record = logging.LogRecord("pyramid_txmail.test", logging.WARNING, __file__, 1, msg,
                               args, None)
    record.__dict__.update(extra)
    return record


@given(HOSTILE, HOSTILE, HOSTILE)
def test_every_log_format_escapes_arguments_fields_and_exceptions(a, b, c):
    record = _record("%s sent %s", a, b, message_id=c, relay=a, code=250, attempt=1)
    try:
        raise RuntimeError(c)
    except RuntimeError:
        record.exc_info = sys.exc_info()
    for formatter in (SafeFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert not _unsafe(line), repr(line)
        line.encode("utf-8")
        if isinstance(formatter, JsonFormatter):
            assert json.loads(line)["attempt"] == 1


def _view(name, subject, reason, address):
    """What list/show/status read from a message (a spool's or the outbox's view)."""
    return types.SimpleNamespace(
        name=name, state="failed", toaddrs=[address, address], fromaddr=address,
        queued_at=1.7e9, attempts=2, subject=subject, last_error=reason,
        message_id=subject, path="/spool/failed/" + name, headers=[(subject, reason)],
        meta={"reason": reason, "failed_at": 1.7e9, "delivered": [address],
              "history": [{"time": 1.7e9, "attempt": 2, "results": [
                  {"recipient": address, "status": "failed", "code": 550, "text": reason,
                   "relay": name}]}]})


@settings(max_examples=60, deadline=None)
@given(HOSTILE, HOSTILE, HOSTILE, HOSTILE)
def test_every_txmail_queue_text_output_is_escaped(name, subject, reason, address):
    msg = _view(name, subject, reason, address)
    info = {"spool": name, "queue": name, "oldest_age": 5.0, "next_retry": None,
            "states": {"failed": {"label": "dead letter", "count": 1, "oldest_age": 5.0}}}
    outputs = (queue_text.list_lines([msg], ["failed"], 1.7e9 + 9)
               + queue_text.show_lines(msg, 1.7e9 + 9, reason.encode("utf-8",
                                                                    "surrogatepass"), True)
               + queue_text.status_lines(info) + queue_ops.status_table(info))
    for line in outputs:
        assert not _unsafe(line, keep="\n\t"), repr(line)  # a body shown whole keeps tabs
        line.encode("utf-8")


# -- the real commands ------------------------------------------------------------------

BAD_NAME = b"1796179001.M\xff\x9b2J.vm"
BIDI_SUBJECT = "pay \u200fnow\u061c \u202eevil\u2066"


def _hostile_queue(tmp_path):
    """A spool with a non-UTF-8 file name, a Cf-laden Subject, and a dead letter whose
    state file's reason holds a lone surrogate."""
    spool = make_spool(tmp_path)
    raw = ("From txmail-envelope-1 a@example.com b@example.org\nX-Actually-From: a@example.com"
           f"\nX-Actually-To: b@example.org\nSubject: {BIDI_SUBJECT}\nMessage-ID: <x@y>\n\n"
           "body\n").encode()
    with open(os.path.join(os.fsencode(spool.path), b"new", BAD_NAME), "wb") as out:
        out.write(raw)
    name = "1796179100.M9P9Q9.vm"
    with open(os.path.join(spool.path, "failed", name), "wb") as out:
        out.write(raw.replace(b"<x@y>", b"<z@y>"))
    with open(os.path.join(spool.path, "meta", name + ".json"), "w") as out:
        json.dump({"attempts": 1, "failed_at": 1.7e9, "queued_at": 1.7e9 - 100,
                   "reason": "550 bad \ud800 \u200f"}, out)
    return write_ini(tmp_path)


def _run_bytes(env_extra, *argv):
    env = dict(os.environ, **env_extra)
    return subprocess.run([QUEUE, *argv], capture_output=True, env=env, timeout=120)


def test_txmail_queue_output_with_non_utf8_names_surrogates_and_bidi_marks(tmp_path):
    ini = _hostile_queue(tmp_path)
    commands = (["list"], ["list", "--json"], ["show", "1796179100"],
                ["show", "1796179001", "--body"])
    for env in ({"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"},
                {"LC_ALL": "C.UTF-8"}, {"PYTHONIOENCODING": "ascii:strict", "LC_ALL": "C"}):
        for argv in commands:
            done = _run_bytes(env, ini, *argv)
            assert done.returncode == 0, (env, argv, done.stderr)
            out = done.stdout + done.stderr
            text = out.decode("utf-8")  # strict: no raw 0xff, no encoded surrogate
            assert not _unsafe(text), (env, argv, text)
            assert b"\xc2\x9b" not in out and b"\x9b" not in out
    listed = _run_bytes({"LC_ALL": "C.UTF-8"}, ini, "list").stdout.decode()
    assert "\\udcff\\udc9b2J" in listed and "\\u200fnow\\u061c" in listed


def test_a_reader_that_goes_away_is_a_quiet_exit_141(tmp_path):
    """stdout is a pipe whose reader has already closed: every write fails with EPIPE."""
    spool = make_spool(tmp_path)
    ini = write_ini(tmp_path)
    for argv in (["status"], ["list"], ["watch", "--interval", "0.1"], ["status", "--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([QUEUE, ini, *argv], stdout=write_end,
                                  stderr=subprocess.PIPE, timeout=120)
        finally:
            os.close(write_end)
        assert proc.returncode == 141, (argv, proc.stderr)
        assert proc.stderr == b"", (argv, proc.stderr)


def test_usage_text_is_not_at_stake(tmp_path):
    """The checks above read real output: a sanity check that they can fail."""
    assert _unsafe("a\u200fb") == ["\u200f"] and _unsafe("x\udcff") == ["\udcff"]
    assert run(QUEUE, "--help").returncode == 0
