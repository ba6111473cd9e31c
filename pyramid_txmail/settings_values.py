"""The value parsers of the ``mail.*`` settings: text from an ini file to a value.

Each parser takes what the ini (or a dict from Python) holds and returns the
value, or raises ``ValueError`` whose text says what would have been accepted;
:func:`pyramid_txmail.settings.parse_settings` adds the key and the value.
They live apart from the table (:mod:`pyramid_txmail.settings_table`) and from
the parsing of a whole settings dict (:mod:`pyramid_txmail.settings`), which
import them.
"""
from __future__ import annotations

import math
import os
import re
import shlex

from pyramid.settings import asbool

from .util.printable import get_logger

DELIVERY_MODES = ("queue", "direct", "sendmail", "memory", "file", "console", "null")
#: Deliveries for development and tests (pyramid_txmail.mailer.devdelivery): nothing is sent.
DEV_DELIVERY_MODES = ("memory", "file", "console", "null")
FALLBACK_MODES = ("none", "queue")
#: Who delivers the queue: txmail-qp (cron or a service), or a thread of each web process.
PROCESSOR_MODES = ("external", "thread")
#: Whether txmail-qp loads the application (whose subscribers see its events) or not.
QP_EVENTS_MODES = ("app", "none")

#: The most txmail-qp processes: past a few per core they only add start-up and memory.
MAX_PROCESSES = 64




_TRUE = ("true", "yes", "on", "y", "t", "1")
_FALSE = ("false", "no", "off", "n", "f", "0", "")


def _bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError("expected a boolean (true/false, yes/no, on/off, 1/0)")
    return asbool(text)


#: Numbers are ASCII digits only: ``int()`` and ``float()`` also take ``1_000``,
#: Arabic-Indic or full-width digits, which no ini file means as a setting.
_WHOLE = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def _int(value, minimum=None, maximum=None):
    text = str(value).strip()
    if not _WHOLE.match(text):
        raise ValueError("expected a whole number (digits 0-9)")
    number = int(text)
    if minimum is not None and number < minimum:
        raise ValueError(f"expected a number >= {minimum}")
    if maximum is not None and number > maximum:
        raise ValueError(f"expected a number <= {maximum}")
    return number


def _port(value):
    return _int(value, 1, 65535)


def _debug(value):
    return _int(value, 0, 2)


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
#: The longest duration accepted.  Durations end up as socket, select and lock
#: timeouts, which overflow somewhere past 10**11 s (and NaN compares false with
#: everything); a year is beyond any sensible mail timeout or queue lifetime.
MAX_DURATION = 365 * 86400.0
#: The shortest duration accepted anywhere (1 ms): below every clock and
#: syscall granularity worth having; ``0.0000001`` is a typo, not a setting.
#: Some keys have a floor of their own (see :func:`_at_least`).
MIN_DURATION = 0.001


def parse_duration(value, minimum=MIN_DURATION, why=None):
    """``"30"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"5d"`` → seconds (float), at most a year
    and at least ``minimum``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range: 10**400
            raise ValueError("expected a duration of at most 365d") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError("expected a positive, finite duration")
    else:
        match = _DURATION.match(str(value))
        if not match or float(match.group(1)) <= 0:
            raise ValueError("expected a positive duration such as 30, 30s, 5m, 2h or 5d")
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not seconds <= MAX_DURATION:  # also inf, from 400 digits
        raise ValueError("expected a duration of at most 365d")
    if seconds < minimum:
        raise ValueError(f"expected at least {minimum:g}s" + (f": {why}" if why else ""))
    return seconds


def _at_least(minimum, why):
    """A duration parser with a floor of its own, and the reason for it."""
    return lambda value: parse_duration(value, minimum, why)


_claim_timeout = _at_least(1.0, "a live processor refreshes its claim (the spool's "
                           "heartbeat, the SQL outbox's lease) every claim_timeout/4, "
                           "which needs some margin")
#: Below this, polling new/ is a busy loop.
MIN_POLL_INTERVAL = 0.01
#: Below this, txmail-qp could clean up a live commit's files in tmp/ or prepared/.
MIN_COMMIT_GRACE = 60.0


def _str(value):
    text = str(value).strip()
    return text or None


def _address(value):
    from .compose.message import validate_address_header

    text = _str(value)
    if text is None:
        return None
    validate_address_header("mail.default_sender", text)
    return text


def _addresses(value):
    from .compose.redirect import parse_redirect_to

    return parse_redirect_to(value) or None


def _choice(choices):
    def parse(value):
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError("expected one of: " + ", ".join(choices))
        return text

    return parse


#: The smallest ``mail.rate_limit`` (one message a day): below it, the wait
#: between two messages (1/rate) would overflow the lock timeout it sleeps in.
MIN_RATE = 1 / 86400


def _rate(value):
    """Messages per second: a finite number >= 0; 0 means no limit (None)."""
    text = str(value).strip()
    if not _DECIMAL.match(text) and text.lower().lstrip("+-") not in ("nan", "inf",
                                                                      "infinity"):
        raise ValueError("expected a number (digits 0-9)")
    number = float(text)
    if not math.isfinite(number):  # nan compares false with everything: no limit at all
        raise ValueError("expected a finite number (0 for no limit)")
    if number < 0:
        raise ValueError("expected a number >= 0 (0 for no limit)")
    if 0 < number < MIN_RATE:
        raise ValueError(f"expected 0 (no limit) or at least {MIN_RATE:.3g} "
                         "(one message a day)")
    return number or None


def _hosts(value):
    """``"smtp2.example.com:587, 10.0.0.5"`` → ``(("smtp2.example.com", 587), ("10.0.0.5", None))``."""
    hosts = []
    for item in re.split(r"[\s,]+", str(value).strip()):
        if not item:
            continue
        host, sep, port = item.partition(":") if item.count(":") == 1 else (item, "", "")
        if not host:
            raise ValueError(f"{item!r} has no host name")
        try:
            hosts.append((host, _port(port) if sep else None))
        except ValueError:
            raise ValueError(f"{item!r}: the port must be a number from 1 to 65535") from None
    return tuple(hosts) or None


def _absolute(text):
    """A path every process reads the same: relative ones are refused, not guessed.

    A relative path would be resolved against each process's working
    directory -- the application's, txmail-qp's from cron -- which differ
    (a second, empty spool that txmail-qp drained with ``sent=0``).  The
    application never learns its ini file's directory (PasteDeploy passes
    ``here`` only to the app factory's ``global_config``), so it cannot be
    resolved against that either; ``%(here)s`` in the ini does it.
    """
    if not os.path.isabs(text):
        raise ValueError("a relative path would mean a different directory for each "
                         "process's working directory; give an absolute path, e.g. "
                         f"%(here)s/{text.removeprefix('./')} in the ini file "
                         "(%(here)s is the ini file's directory)")
    return text


def _path(value):
    text = _str(value)
    return None if text is None else _absolute(text)


def _paths(value):
    """Directories separated by whitespace or newlines (pyramid's ``aslist``)."""
    if isinstance(value, (list, tuple)):
        paths = tuple(str(v) for v in value if str(v).strip())
    else:
        paths = tuple(str(value).split())
    return tuple(_absolute(p) for p in paths) or None


_URL_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


def _url_prefix(value):
    text = str(value).strip().rstrip("/")
    if not _URL_PREFIX.match(text):
        raise ValueError("expected a URL path such as /_mail (letters, digits and . _ ~ - "
                         "between slashes)")
    return text


def _queue_url(value):
    """A SQLAlchemy URL of PostgreSQL or of an SQLite file given by its absolute path.

    The error never repeats the URL (it may hold a password), and SQLAlchemy's
    own parse error, which does, is not passed on.
    """
    text = _str(value)
    if text is None:
        return None
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        raise ValueError("the SQL outbox needs SQLAlchemy: pip install "
                         "'pyramid_txmail[sql]'") from None
    try:
        url = make_url(text)
    except (ArgumentError, ValueError, TypeError):
        raise ValueError("not a SQLAlchemy URL; expected e.g. postgresql://user@host/db "
                         "or sqlite:////abs/path/app.sqlite") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise ValueError("an in-memory SQLite database is private to one connection; "
                             "give the file's absolute path: sqlite:////abs/path/app.sqlite")
        _absolute(url.database)
    elif backend != "postgresql":
        raise ValueError(f"the outbox runs on postgresql or sqlite, not {backend}")
    return text


def _shown_url(value):
    """A URL for an error message, its password hidden (or nothing if it does not parse)."""
    from .util.shown_url import shown_url

    try:
        return repr(shown_url(str(value)))
    except Exception:
        return "(not shown: it may hold a password)"


def _callable(value):
    """A dotted name (``pkg.module:function`` or ``pkg.module.function``), imported."""
    if callable(value):
        return value
    from pyramid.path import DottedNameResolver

    text = _str(value)
    if text is None:
        return None
    try:
        found = DottedNameResolver().resolve(text)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import it: {exc}") from None
    if not callable(found):
        raise ValueError("it is not callable")
    return found


def _session_finder(value):
    """``mail.queue_session``: a request attribute name (``dbsession``) or a dotted
    name of ``function(request) -> session`` (``pkg.module:function``), imported now."""
    if callable(value):
        return value
    text = _str(value)
    if text is None:
        raise ValueError("expected a request attribute such as dbsession, or a dotted name "
                         "pkg.module:function")
    if text.isidentifier():
        return text
    return _callable(text)


def _template(value):
    """An argument list (split like a shell would, never run by one); see
    :func:`pyramid_txmail.relay.sendmail.check_template` for what is accepted."""
    from .relay.sendmail import check_template, without_t_warning

    template = list(value) if isinstance(value, (list, tuple)) else shlex.split(str(value))
    warning = without_t_warning(template)
    if warning:
        get_logger("pyramid_txmail").warning("%s", warning)
    return check_template(template)


def _dkim_headers(value):
    from .relay.dkim_keys import parse_header_names

    return parse_header_names(value)


def _dkim_domains(value):
    from .relay.dkim_keys import parse_domains

    return parse_domains(value)
