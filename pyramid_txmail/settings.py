"""The ``mail.*`` settings of an application, parsed and checked together.

The settings are parsed once, at ``config.include`` time (and by the console
scripts), into a frozen :class:`MailSettings`.  A wrong value is a
:class:`pyramid.exceptions.ConfigurationError` that names the key, the value
and what would have been accepted -- never a traceback at the first send.  An
unknown key is a WARNING (it may belong to the application, as pyramid_mailer
allowed) that names the closest known key.

The keys are the table of :mod:`pyramid_txmail.settings_table`, their value
parsers :mod:`pyramid_txmail.settings_values`; both are re-exported here, where
the rest of the package and applications import them from.
"""
from __future__ import annotations

import dataclasses
import os
import stat

from .settings_table import SETTINGS, Setting, shown_default
from .settings_values import (
    DELIVERY_MODES, DEV_DELIVERY_MODES, FALLBACK_MODES, MAX_DURATION, MAX_PROCESSES,
    MIN_COMMIT_GRACE, MIN_DURATION, MIN_POLL_INTERVAL, MIN_RATE, PROCESSOR_MODES,
    QP_EVENTS_MODES, _address, _shown_url, parse_duration)
from .util.config_error import configuration_error
from .util.cpus import usable_cores
from .util.printable import get_logger

PREFIX = "mail."
#: pyramid_mailer's setting that moves its keys elsewhere (``mail.`` by default).
PREFIX_SETTING = "pyramid_mailer.prefix"

log = get_logger(__name__)

#: What the package and applications import from here (the table's and parsers' names
#: re-exported, so that their modules can change without breaking those imports).
__all__ = [
    "SETTINGS", "Setting", "shown_default", "DELIVERY_MODES", "DEV_DELIVERY_MODES",
    "FALLBACK_MODES", "MAX_DURATION", "MAX_PROCESSES", "MIN_COMMIT_GRACE", "MIN_DURATION",
    "MIN_POLL_INTERVAL", "MIN_RATE", "PROCESSOR_MODES", "QP_EVENTS_MODES", "_address",
    "parse_duration", "usable_cores", "PREFIX", "PREFIX_SETTING", "MailSettings",
    "settings_prefix", "parse_settings"]

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
    #: None until parsed; :func:`parse_settings` fills in :func:`usable_cores`.
    processes: int | None = None
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
    if "processes" not in values:
        values["processes"] = min(usable_cores(), MAX_PROCESSES)
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
