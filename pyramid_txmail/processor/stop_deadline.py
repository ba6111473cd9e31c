"""Stop deadlines shorter than a message in flight may need: said at start-up.

On SIGTERM the processor claims nothing new and finishes what it is sending.
Finishing may take as long as the SMTP deadlines allow -- up to
``mail.data_timeout`` (10 minutes by default, RFC 5321's figure) for the
relay's reply to the final dot, plus ``mail.timeout`` for the steps around
it.  A supervisor that SIGKILLs sooner (systemd's ``TimeoutStopSec``,
gunicorn's ``graceful_timeout`` -- 30 s by default --, Kubernetes'
``terminationGracePeriodSeconds``) may kill the process after the relay took
the message but before the claim was settled: the message is sent again
after ``mail.claim_timeout``, a duplicate (outside probe of issue 15,
finding 1).  The deadlines we ship cover it; the ones we can read at
start-up are checked here and a warning says which setting to raise.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.processor")

#: Steps of one SMTP transaction bounded by ``mail.timeout`` around the final dot's
#: wait: the body's last write, and the QUIT after it (and a little for the rest).
TIMEOUT_STEPS = 3


def in_flight_deadline(settings):
    """The longest a message in flight may take to finish once a stop is asked."""
    return settings.data_timeout + TIMEOUT_STEPS * settings.timeout


def check_stop_deadline(settings, deadline, what, advice):
    """Warn when ``deadline`` (seconds; ``None``: unknown or unlimited) is shorter than
    :func:`in_flight_deadline`; returns True when it was."""
    needed = in_flight_deadline(settings)
    if deadline is None or deadline >= needed:
        return False
    log.warning("%s is %gs, shorter than a message in flight may take to finish after a "
                "stop (mail.data_timeout %gs + %d x mail.timeout %gs = %gs): a stop then "
                "kills a delivery the relay may already have accepted, and it is sent "
                "again after mail.claim_timeout; %s to at least %gs",
                what, deadline, settings.data_timeout, TIMEOUT_STEPS, settings.timeout,
                needed, advice, needed + 30)
    return True


# -- systemd ----------------------------------------------------------------------------

_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d|w|M|y)?")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1, None: 1, "min": 60, "h": 3600, "d": 86400,
            "w": 604800, "M": 2629800, "y": 31557600}


def parse_timespan(text):
    """systemd's time span as ``systemctl show`` prints it (``1min 30s``, ``500ms``)
    in seconds; ``None`` for ``infinity``, an empty value or anything else."""
    text = (text or "").strip()
    if not text or text == "infinity":
        return None
    total, end = 0.0, 0
    for match in _SPAN.finditer(text):
        if text[end:match.start()].strip():
            return None
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        end = match.end()
    return total if end and not text[end:].strip() else None


def systemd_unit(cgroup_text):
    """``(unit, user manager?)``: the ``.service`` this process runs in, from
    ``/proc/self/cgroup``; ``(None, False)`` outside one."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        for piece in reversed(path.split("/")):
            if piece.endswith(".service") and not piece.startswith("user@"):
                return piece, "/user@" in path
    return None, False


def systemd_stop_timeout(environ=None, cgroup="/proc/self/cgroup", systemctl=None):
    """``TimeoutStopSec`` of the unit we run in, in seconds, or None when not under
    systemd or it cannot be asked.  systemd puts no stop deadline in the environment
    (``$INVOCATION_ID`` says we are a unit): ``systemctl show`` is asked, once."""
    environ = os.environ if environ is None else environ
    if not environ.get("INVOCATION_ID"):
        return None
    try:
        with open(cgroup) as f:
            unit, user = systemd_unit(f.read())
    except OSError:
        unit, user = None, False
    systemctl = systemctl or shutil.which("systemctl")
    if unit is None or systemctl is None:
        return None
    try:
        done = subprocess.run([systemctl, *(["--user"] if user else []), "show", "--property=TimeoutStopUSec",
                               unit], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("cannot ask systemctl for the stop timeout of %s: %s", unit, exc)
        return None
    value = done.stdout.strip().partition("=")[2] if done.returncode == 0 else ""
    return parse_timespan(value)


def check_systemd(settings, environ=None, **where):
    timeout = systemd_stop_timeout(environ, **where)
    return check_stop_deadline(settings, timeout, "systemd's TimeoutStopSec of this unit",
                               "raise TimeoutStopSec= in the unit")


# -- gunicorn ---------------------------------------------------------------------------

def gunicorn_graceful_timeout():
    """The ``graceful_timeout`` of the gunicorn worker this process is, or None.

    A gunicorn worker's SIGTERM handler is its own bound method; its ``cfg`` is
    the server's configuration (command line, config file and defaults merged).
    """
    handler = signal.getsignal(signal.SIGTERM)
    worker = getattr(handler, "__self__", None)
    if worker is None or not type(worker).__module__.startswith("gunicorn."):
        return None
    value = getattr(getattr(worker, "cfg", None), "graceful_timeout", None)
    return float(value) if isinstance(value, (int, float)) else None


def check_gunicorn(settings):
    return check_stop_deadline(settings, gunicorn_graceful_timeout(),
                               "gunicorn's graceful_timeout",
                               "raise it (--graceful-timeout, or graceful_timeout in the "
                               "gunicorn config)")
