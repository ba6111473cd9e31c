"""The standard streams of ``txmail-qp`` and ``txmail-queue``: they never raise on output.

Everything printed or logged is escaped first
(:func:`pyramid_txmail.util.printable.printable`), but a last line of defence
costs nothing: a character that the terminal's encoding cannot show (a
Latin-1 locale, ``PYTHONIOENCODING=utf-8:strict``) is written as a
backslash escape instead of ending the command with ``UnicodeEncodeError``.

A reader that goes away (``txmail-queue INI list | head -1``) is what Unix
tools expect: no "unexpected error", no "Exception ignored" at exit, and
the exit status a shell reports for a tool that SIGPIPE killed, 141
(128 + SIGPIPE): ``set -o pipefail`` scripts see what ``cat``/``grep``
would give them, and the output *was* cut short, so 0 would be a lie.
"""
from __future__ import annotations

import os
import sys

EX_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool killed by it


def guard_streams():
    """Give the command standard streams that exist and never raise on output.

    A process manager or a cron wrapper may start it with fd 0, 1 or 2 closed
    (``>&-``): Python then has ``sys.stdout = None``, and worse, the next file or
    socket opened takes that number, so anything written to "stdout" would go
    into a spool file or the SMTP session.  Each closed one is opened on
    ``/dev/null`` first.  Then stdout and stderr write what they cannot encode
    as backslash escapes.
    """
    _reopen_closed()
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # a test's StringIO has none
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # closed, or detached: nothing to guard
                pass


def quiet_broken_pipe():
    """After ``BrokenPipeError`` on stdout: point stdout at /dev/null so that the
    interpreter's final flush cannot raise again, and give the status to exit with
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout: nothing left to flush
        pass
    return EX_BROKEN_PIPE


def _reopen_closed():
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # closed: the lowest free number is this one (lower ones are open)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))
