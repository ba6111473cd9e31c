"""Every ``mail.*`` setting in one table: its type, default and error text.

The settings are parsed once, at ``config.include`` time (and by the console
scripts), into a frozen :class:`MailSettings`.  A wrong value is a
:class:`pyramid.exceptions.ConfigurationError` that names the key, the value
and what would have been accepted -- never a traceback at the first send.  An
unknown key is a WARNING (it may belong to the application, as pyramid_mailer
allowed) that names the closest known key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import stat

from pyramid.settings import asbool

from .util.config_error import configuration_error
from .util.printable import get_logger

PREFIX = "mail."
#: pyramid_mailer's setting that moves its keys elsewhere (``mail.`` by default).
PREFIX_SETTING = "pyramid_mailer.prefix"

log = get_logger(__name__)

DELIVERY_MODES = ("queue", "direct", "sendmail", "memory", "file", "console", "null")
#: Deliveries for development and tests (pyramid_txmail.mailer.devdelivery): nothing is sent.
DEV_DELIVERY_MODES = ("memory", "file", "console", "null")
FALLBACK_MODES = ("none", "queue")
#: Who delivers the queue: txmail-qp (cron or a service), or a thread of each web process.
PROCESSOR_MODES = ("external", "thread")
#: Whether txmail-qp loads the application (whose subscribers see its events) or not.
QP_EVENTS_MODES = ("app", "none")

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


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    parse: object
    default: object
    doc: str


#: The table.  README.rst documents the same keys; tests check they agree.
SETTINGS = (
    Setting("host", _str, "localhost", "SMTP relay host."),
    Setting("port", _port, None, "SMTP port (default 25, or 465 with mail.ssl)."),
    Setting("username", _str, None, "SMTP AUTH user name."),
    Setting("password", _str, None, "SMTP AUTH password (never logged)."),
    Setting("tls", _bool, False, "Require STARTTLS; a server without it is an error."),
    Setting("ssl", _bool, False, "Implicit TLS (SMTPS, usually port 465)."),
    Setting("keyfile", _path, None, "Client certificate key file for TLS."),
    Setting("certfile", _path, None, "Client certificate file for TLS."),
    Setting("tls_cafile", _path, None, "CA bundle used to verify the server instead of the system store."),
    Setting("timeout", parse_duration, 30.0, "SMTP socket timeout (30, 30s, 2m)."),
    Setting("data_timeout", parse_duration, 600.0,
            "How long to wait for the reply to the end of the message data (RFC 5321 "
            "4.5.3.2.6: 10 minutes; giving up sooner can deliver the message twice); "
            "at least mail.timeout."),
    Setting("queue_path", _path, None,
            "Maildir spool directory, an absolute path (%(here)s/...); created 0700 by the "
            "application if missing."),
    Setting("queue_url", _queue_url, None,
            "SQLAlchemy URL of the SQL outbox (postgresql://..., sqlite:////abs/path); when "
            "set, the queue is the outbox table in that database (its password is never "
            "logged)."),
    Setting("keep_delivered", parse_duration, 86400.0,
            "SQL outbox: delivered rows (without their body) are kept this long, then "
            "deleted by txmail-qp."),
    Setting("delivery", _choice(DELIVERY_MODES), None,
            "queue (default when queue_path is set), direct, sendmail (the "
            "mail.sendmail_app binary, after the commit), or for development and "
            "tests memory, file, console or null."),
    Setting("direct_fallback", _choice(FALLBACK_MODES), None,
            "With direct or sendmail delivery: 'queue' (default when queue_path is set) "
            "spools a message the relay (or sendmail) did not take; 'none' only reports it."),
    Setting("direct_timeout", parse_duration, 10.0,
            "With direct or sendmail delivery: the longest a request waits for the relay; "
            "a message still being sent then is finished in the background, those not "
            "started go to the fallback queue."),
    Setting("default_sender", _address, None, "From address used when a message has none."),
    Setting("debug", _debug, 0, "smtplib debug level (0, 1 or 2), written to stderr."),
    Setting("log_format", _choice(("text", "json")), "text",
            "txmail-qp and txmail-queue: log lines as text, or json (one object per line "
            "with time, level, logger, message, message_id, relay, code, attempt, "
            "recipient); both escape control characters."),
    Setting("sendmail_app", _str, "/usr/sbin/sendmail",
            "The sendmail binary of mail.delivery = sendmail and send_sendmail()."),
    Setting("sendmail_template", _template, ["{sendmail_app}", "-i", "-f", "{sender}"],
            "Its command line; {sendmail_app} and {sender} are filled in, the "
            "recipients follow --, a -t is dropped (never read from headers)."),
    Setting("claim_timeout", _claim_timeout, 3600.0,
            "A message claimed by a processor that died goes back to the queue after "
            "this (a live one refreshes its claim -- the spool's heartbeat, the SQL "
            "outbox's lease -- every claim_timeout/4, at least every minute, so a longer "
            "send keeps it); at least 1s."),
    Setting("commit_grace", _at_least(MIN_COMMIT_GRACE, "a shorter grace could clean up "
                                      "the files of a commit that is still going on"), 3600.0,
            "A message a crashed process left half-committed in the spool is cleaned up "
            "(tmp/) or resolved (prepared/) once it is this old; at least 1m."),
    Setting("commit_check", _callable, None,
            "Dotted name of check(message_id, registry) -> True/False/None: did the "
            "transaction of a message left in prepared/ commit? (see README, Crashes)"),
    Setting("retry_initial", parse_duration, 300.0, "First retry delay after a temporary failure."),
    Setting("retry_max", parse_duration, 4000.0, "Longest delay between two retries."),
    Setting("max_queue_time", parse_duration, 5 * 86400.0,
            "A message still undelivered after this is dead-lettered."),
    Setting("processor", _choice(PROCESSOR_MODES), "external",
            "Who delivers the queue: external (txmail-qp from cron or as a service) or "
            "thread (a background thread in each web process, started by its first request; "
            "see README, In-app processor thread)."),
    Setting("workers", lambda v: _int(v, 1, 64), 4,
            "Parallel SMTP connections of txmail-qp (each reused for many messages)."),
    Setting("connection_max_messages", lambda v: _int(v, 1, 10 ** 9), 1000,
            "Messages sent over one SMTP connection before it is closed and reopened."),
    Setting("fallback_hosts", _hosts, None,
            "Relays tried in order when mail.host is unreachable, and for the "
            "recipients of a message a relay answered 4xx (host or host:port, "
            "comma-separated; the port defaults to mail.port)."),
    Setting("host_rest", parse_duration, 300.0,
            "A relay that keeps failing to set up a session is not tried again for this "
            "long (one answering 4xx to a message is not rested)."),
    Setting("rate_limit", _rate, None,
            "Most messages per second txmail-qp sends, across all workers (unset or 0: no "
            "limit)."),
    Setting("poll_interval", _at_least(MIN_POLL_INTERVAL, "polling more often is a busy "
                                       "loop"), 1.0,
            "txmail-qp --daemon: how often to look for new mail when inotify is unavailable; "
            "at least 0.01s."),
    Setting("qp_events", _choice(QP_EVENTS_MODES), "app",
            "txmail-qp: app loads the application so that its subscribers see MailSent, "
            "MailDeferred and MailFailed; none skips loading it (a faster start, no "
            "events; the app warns at start-up if it subscribes to them)."),
    Setting("file_path", _path, None,
            "mail.delivery = file: the directory each committed message is written to as .eml."),
    Setting("top_level_directory", _str, None,
            "pyramid_mailer's DebugMailer directory: config.include('pyramid_txmail.debug') "
            "writes there when mail.file_path is not set (default ./mail)."),
    Setting("redirect_to", _addresses, (),
            "Staging: send every message to these addresses instead of its recipients."),
    # DKIM signing at send time (pyramid_txmail.relay.dkim; README, DKIM signing).
    Setting("dkim_private_key", _path, None,
            "DKIM: the PEM RSA private key of mail.dkim_domain (mode 0600 or 0400, owned "
            "by the process user); read at startup."),
    Setting("dkim_selector", _str, None, "DKIM: the selector of mail.dkim_private_key."),
    Setting("dkim_domain", _str, None,
            "DKIM: the signing domain (d=) of mail.dkim_private_key; messages whose From "
            "is in it (or a subdomain) are signed."),
    Setting("dkim_domains", _dkim_domains, None,
            "DKIM for several domains: lines of 'domain selector /path/key.pem'; the From "
            "domain picks the key."),
    Setting("dkim_headers", _dkim_headers, None,
            "DKIM: header fields signed when present (From always; default From, Sender, "
            "Reply-To, To, Cc, Subject, Date, Message-ID, ...)."),
    Setting("dkim_canonicalization", _choice(("relaxed/relaxed", "relaxed/simple",
                                              "simple/relaxed", "simple/simple")), None,
            "DKIM header/body canonicalization (default relaxed/relaxed)."),
    # The preview page (pyramid_txmail.preview).
    Setting("preview_allow", _bool, False,
            "Allow the preview page outside development (see README, Preview page)."),
    Setting("preview_dirs", _paths, (),
            "Extra directories of .eml files the preview page lists (whitespace-separated)."),
    Setting("preview_prefix", _url_prefix, "/_mail", "URL path of the preview page."),
    # Operating txmail-qp (pyramid_txmail.processor.metrics; needs the ``ops`` extra).
    Setting("metrics_port", _port, None,
            "txmail-qp --daemon: serve Prometheus /metrics and /healthz on this TCP port "
            "(off when unset; needs pyramid_txmail[ops])."),
    Setting("metrics_host", _str, "127.0.0.1",
            "The address mail.metrics_port listens on (0.0.0.0: every interface)."),
    Setting("metrics_file", _path, None,
            "txmail-qp: write the metrics in the node_exporter textfile-collector format "
            "to this file after each pass (atomically; needs pyramid_txmail[ops])."),
    # The SQL outbox, in the mailer (pyramid_txmail.mailer.sqloutbox).
    Setting("queue_session", _session_finder, "dbsession",
            "With the SQL outbox (mail.queue_url): the application's SQLAlchemy session a "
            "send writes its row through -- a request attribute (request.dbsession) or a "
            "dotted name pkg.module:function called with the request."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class MailSettings:
    """The parsed ``mail.*`` settings (see :data:`SETTINGS`)."""

    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    ssl: bool = False
    keyfile: str | None = None
    certfile: str | None = None
    tls_cafile: str | None = None
    timeout: float = 30.0
    data_timeout: float = 600.0
    queue_path: str | None = None
    queue_url: str | None = dataclasses.field(default=None, repr=False)
    keep_delivered: float = 86400.0
    delivery: str = "direct"
    direct_fallback: str = "none"
    direct_timeout: float = 10.0
    default_sender: str | None = None
    debug: int = 0
    log_format: str = "text"
    sendmail_app: str = "/usr/sbin/sendmail"
    sendmail_template: list = dataclasses.field(
        default_factory=lambda: ["{sendmail_app}", "-i", "-f", "{sender}"])
    claim_timeout: float = 3600.0
    commit_grace: float = 3600.0
    commit_check: object = None
    retry_initial: float = 300.0
    retry_max: float = 4000.0
    max_queue_time: float = 5 * 86400.0
    processor: str = "external"
    workers: int = 4
    connection_max_messages: int = 1000
    fallback_hosts: tuple = ()
    host_rest: float = 300.0
    rate_limit: float | None = None
    poll_interval: float = 1.0
    qp_events: str = "app"
    file_path: str | None = None
    top_level_directory: str | None = None
    redirect_to: tuple = ()
    preview_allow: bool = False
    preview_dirs: tuple = ()
    preview_prefix: str = "/_mail"
    queue_session: object = "dbsession"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_file: str | None = None
    dkim_private_key: str | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_domains: tuple | None = None
    dkim_headers: tuple | None = None
    dkim_canonicalization: str | None = None
    #: The :class:`~pyramid_txmail.relay.dkim.DKIMSigner` built from the dkim_* keys
    #: (their key files read at startup), or None: the transports sign with it.
    dkim: object = dataclasses.field(default=None, repr=False, compare=False)


def _effective(values, name):
    """The value a key will have: as set, else its default."""
    return values[name] if name in values else getattr(MailSettings, name)


def _check_readable_file(path):
    """Open and close ``path``: a regular file (symlinks followed, as in /etc/ssl).

    ``O_NONBLOCK``: a FIFO given as a certificate must not hang the start-up.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
    finally:
        os.close(fd)


def _fail(key, value, why):
    shown = ("***" if key.endswith("password") else _shown_url(value)
             if key.endswith("queue_url") else repr(value))
    if len(shown) > 80:  # 400 digits say nothing more than the first 40
        shown = shown[:40] + f"... ({len(shown)} characters)"
    raise configuration_error(f"{key} = {shown}: {why}")


def settings_prefix(settings, prefix=None):
    """The prefix of our keys: ``prefix`` if given, else pyramid_mailer's
    ``pyramid_mailer.prefix`` setting, else ``mail.`` -- so that an app that moved
    pyramid_mailer's keys keeps them, and the app, ``txmail-qp`` and the preview
    page all read the same keys."""
    if prefix is not None:
        return prefix
    return str(settings.get(PREFIX_SETTING) or PREFIX).strip()


def _warn_unknown(key, prefix):
    """An unknown key is not ours, and may be the application's own (kinto-emailer
    reads ``mail.debug_mailer``): pyramid_mailer ignores such keys, so they are a
    warning -- naming the closest key of ours, since it may also be a typo.  The
    value is not shown: it may be a password under a misspelt name."""
    import difflib  # only for an unknown key

    close = difflib.get_close_matches(key[len(prefix):], _BY_NAME, n=1, cutoff=0.55)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    log.warning("%s is not a pyramid_txmail setting and is ignored%s", key, hint)


def parse_settings(settings, prefix=None, warn=True):
    """Parse the ``mail.*`` keys of a Pyramid settings dict (see :func:`settings_prefix`).

    Raises :class:`ConfigurationError` naming the first bad value; logs a
    WARNING for each unknown key (unless ``warn`` is false).
    """
    prefix = settings_prefix(settings, prefix)
    values = {}
    for key, raw in settings.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        setting = _BY_NAME.get(name)
        if setting is None:
            if warn:
                _warn_unknown(key, prefix)
            continue
        try:
            values[name] = setting.parse(raw)
        except (ValueError, TypeError, OverflowError) as exc:
            _fail(key, raw, str(exc))
        if values[name] is None:
            del values[name]

    if values.get("ssl") and values.get("tls"):
        _fail(prefix + "tls", "true", f"cannot be combined with {prefix}ssl = true "
              "(ssl is implicit TLS, tls is STARTTLS); choose one")
    if "port" not in values:
        values["port"] = 465 if values.get("ssl") else 25
    # A queue is the SQL outbox (queue_url) or else the spool (queue_path); direct
    # delivery's fallback runs after the commit, outside the app's session: the spool only.
    has_queue = values.get("queue_path") or values.get("queue_url")
    if "delivery" not in values:
        values["delivery"] = "queue" if has_queue else "direct"
    if "direct_fallback" not in values:
        values["direct_fallback"] = "queue" if values.get("queue_path") else "none"
    if values["delivery"] == "queue" and not has_queue:
        raise configuration_error(f"{prefix}queue_path: required with {prefix}delivery = "
                                  "queue; set it to a directory for the mail spool (or "
                                  f"{prefix}queue_url to a database for the SQL outbox)")
    if values.get("processor") == "thread" and not has_queue:
        raise configuration_error(f"{prefix}processor: thread needs a queue to deliver; set "
                                  f"{prefix}queue_path (a spool directory) or {prefix}queue_url "
                                  "(the SQL outbox)")
    if values.get("direct_fallback") == "queue" and not values.get("queue_path"):
        raise configuration_error(f"{prefix}queue_path: required with {prefix}direct_fallback "
                                  "= queue; set it to a directory for the mail spool")
    if values["delivery"] == "sendmail":
        from .relay.sendmail import check_app

        app = values.get("sendmail_app", "/usr/sbin/sendmail")
        why = check_app(app)
        if why:
            _fail(prefix + "sendmail_app", app, f"{why}; mail.delivery = sendmail needs the "
                  "sendmail binary of the local MTA (e.g. Postfix's /usr/sbin/sendmail)")
    if values["delivery"] == "file" and not values.get("file_path"):
        raise configuration_error(f"{prefix}file_path: required with {prefix}delivery = file; "
                                  "set it to a directory for the .eml files")
    # Cross-checks: a key may be absent (its default applies), so each reads the
    # effective value and blames the key that was set.
    timeout = _effective(values, "timeout")
    data_timeout = _effective(values, "data_timeout")
    if data_timeout < timeout:
        why = ("the reply to the final dot is the one wait that must not be cut short (the "
               "relay may have the message, and a retry would deliver it twice)")
        if "data_timeout" in values:
            _fail(prefix + "data_timeout", data_timeout,
                  f"shorter than {prefix}timeout ({timeout:g}s): {why}; set it to at least "
                  f"{prefix}timeout, 10m as RFC 5321 says")
        _fail(prefix + "timeout", timeout, f"longer than {prefix}data_timeout "
              f"({data_timeout:g}s, the default): {why}; set {prefix}data_timeout too")
    retry_initial = _effective(values, "retry_initial")
    retry_max = _effective(values, "retry_max")
    if retry_max < retry_initial:
        if "retry_max" in values:
            _fail(prefix + "retry_max", retry_max,
                  f"must not be shorter than {prefix}retry_initial ({retry_initial:g}s)")
        _fail(prefix + "retry_initial", retry_initial, f"longer than {prefix}retry_max "
              f"({retry_max:g}s, the default); set {prefix}retry_max too")
    if values.get("keyfile") and not values.get("certfile"):
        _fail(prefix + "keyfile", values["keyfile"], f"needs {prefix}certfile (the client "
              "certificate the key belongs to)")
    for name in ("keyfile", "certfile", "tls_cafile"):
        path = values.get(name)
        if path is not None:
            try:
                _check_readable_file(path)
            except OSError as exc:
                _fail(prefix + name, path, f"cannot read the file: {exc.strerror}")
    if any(name.startswith("dkim_") for name in values):  # key files read now, not at a send
        from .relay.dkim import DKIMConfigError, signer_from_settings

        try:
            values["dkim"] = signer_from_settings(values)
        except DKIMConfigError as exc:
            _fail(prefix + exc.key, exc.value, exc.why)
    return MailSettings(**values)
