"""Every ``mail.*`` setting in one table: its parser, default and documentation.

The table is the one source of what a key means: :func:`parse_settings
<pyramid_txmail.settings.parse_settings>` parses with it, ``txmail-qp --help``
shows its short ``doc`` lines, and the documentation's settings reference
(``docs/settings.rst``, the ``txmail-settings`` directive of
``docs/_ext/txmail_docs.py``) is generated from it at build time -- its
``reference`` texts (reStructuredText) and defaults -- so the reference cannot
drift from the code.
"""
from __future__ import annotations

import dataclasses

from .settings_values import (
    DELIVERY_MODES, FALLBACK_MODES, MAX_PROCESSES, MIN_COMMIT_GRACE, MIN_POLL_INTERVAL,
    PROCESSOR_MODES, QP_EVENTS_MODES, _address, _addresses, _at_least, _bool,
    _callable, _choice, _claim_timeout, _debug, _dkim_domains, _dkim_headers, _hosts, _int,
    _path, _paths, _port, _queue_url, _rate, _session_finder, _str, _template, _url_prefix,
    parse_duration)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``mail.*`` key (without its prefix)."""

    name: str
    #: Text (or a value from Python) -> the value; raises ValueError saying what is accepted.
    parse: object
    #: The value when the key is absent; None when parse_settings computes it from others.
    default: object
    #: One plain line, for ``txmail-qp --help``.
    doc: str
    #: What the key means, in reStructuredText, for the settings reference.
    reference: str = ""
    #: How the reference shows a default that is computed (``default`` is None then);
    #: otherwise it shows :func:`shown_default`.
    default_text: str = ""


#: The table, in the order the reference lists it.
SETTINGS = (
    Setting("host", _str, "localhost", "SMTP relay host.",
            reference="SMTP relay host"),
    Setting("port", _port, None, "SMTP port (default 25, or 465 with mail.ssl).",
            reference="SMTP port",
            default_text="25 (465 w/ ssl)"),
    Setting("username", _str, None, "SMTP AUTH user name.",
            reference="SMTP AUTH user (AUTH only when set)"),
    Setting("password", _str, None, "SMTP AUTH password (never logged).",
            reference="SMTP AUTH password; never logged or echoed"),
    Setting("tls", _bool, False, "Require STARTTLS; a server without it is an error.",
            reference=("**require** STARTTLS: a server that does not offer it gets nothing "
                       "(never plaintext)")),
    Setting("ssl", _bool, False, "Implicit TLS (SMTPS, usually port 465).",
            reference="implicit TLS (SMTPS); not with ``mail.tls``"),
    Setting("keyfile", _path, None, "Client certificate key file for TLS.",
            reference="client certificate key for TLS"),
    Setting("certfile", _path, None, "Client certificate file for TLS.",
            reference="client certificate for TLS"),
    Setting("tls_cafile", _path, None, "CA bundle used to verify the server instead of the system store.",
            reference="CA bundle to verify the server with",
            default_text="system store"),
    Setting("timeout", parse_duration, 30.0, "SMTP socket timeout (30, 30s, 2m).",
            reference="socket timeout per SMTP step (``30``, ``30s``, ``2m``)"),
    Setting("data_timeout", parse_duration, 600.0,
            "How long to wait for the reply to the end of the message data (RFC 5321 "
            "4.5.3.2.6: 10 minutes; giving up sooner can deliver the message twice); "
            "at least mail.timeout.",
            reference=("wait for the reply to the end of the message data (RFC 5321 4.5.3.2.6: "
                       "the relay may have it; giving up sooner can deliver it twice); at least "
                       "``mail.timeout`` (a shorter one is refused, never quietly raised)")),
    Setting("queue_path", _path, None,
            "Maildir spool directory, an absolute path (%(here)s/...); created 0700 by the "
            "application if missing.",
            reference=("the spool directory (created 0700 by the application); an absolute "
                       "path, e.g. ``%(here)s/var/mail-spool``")),
    Setting("queue_url", _queue_url, None,
            "SQLAlchemy URL of the SQL outbox (postgresql://..., sqlite:////abs/path); when "
            "set, the queue is the outbox table in that database (its password is never "
            "logged).",
            reference=("the SQL outbox: a SQLAlchemy URL (``postgresql://user@host/db`` -- "
                       "psycopg 3 --, or ``sqlite:////abs/path.sqlite``); when set the queue is "
                       "the outbox table in that database; its password is never logged")),
    Setting("keep_delivered", parse_duration, 86400.0,
            "SQL outbox: delivered rows (without their body) are kept this long, then "
            "deleted by txmail-qp.",
            reference=("SQL outbox: a delivered row is kept this long (its body deleted at "
                       "once), then ``txmail-qp`` deletes it")),
    Setting("delivery", _choice(DELIVERY_MODES), None,
            "queue (default when queue_path is set), direct, sendmail (the "
            "mail.sendmail_app binary, after the commit), or for development and "
            "tests memory, file, console or null.",
            reference=("``queue``, ``direct`` or ``sendmail`` (see :doc:`Sendmail delivery "
                       "<direct>`); for development and tests ``memory``, ``file``, ``console`` "
                       "or ``null`` (see :doc:`Development deliveries <devtools>`)"),
            default_text="queue if queue_path or queue_url set, else direct"),
    Setting("direct_fallback", _choice(FALLBACK_MODES), None,
            "With direct or sendmail delivery: 'queue' (default when queue_path is set) "
            "spools a message the relay (or sendmail) did not take; 'none' only reports it.",
            reference=("``queue``: with direct or sendmail delivery, a message the relay (or "
                       "sendmail) did not take goes into the spool; ``none``: it is only logged "
                       "and reported"),
            default_text="queue if queue_path set, else none"),
    Setting("direct_timeout", parse_duration, 10.0,
            "With direct or sendmail delivery: the longest a request waits for the relay; "
            "a message still being sent then is finished in the background, those not "
            "started go to the fallback queue.",
            reference=("direct and sendmail delivery: the longest a request waits for the "
                       "relay; then the message in flight is finished in the background (see "
                       ":doc:`Direct delivery <direct>`)")),
    Setting("default_sender", _address, None, "From address used when a message has none.",
            reference="From for messages without one"),
    Setting("debug", _debug, 0, "smtplib debug level (0, 1 or 2), written to stderr.",
            reference="smtplib debug level (0-2), to stderr"),
    Setting("log_format", _choice(("text", "json")), "text",
            "txmail-qp and txmail-queue: log lines as text, or json (one object per line "
            "with time, level, logger, message, message_id, relay, code, attempt, "
            "recipient); both escape control characters.",
            reference=("txmail-qp and txmail-queue: ``text`` or ``json`` (one object per line; "
                       "see :doc:`JSON logs <operating>`)")),
    Setting("sendmail_app", _str, "/usr/sbin/sendmail",
            "The sendmail binary of mail.delivery = sendmail and send_sendmail().",
            reference=("the sendmail binary of ``mail.delivery = sendmail`` and "
                       "``send_*sendmail`` (checked at startup with ``mail.delivery = "
                       "sendmail``)")),
    Setting("sendmail_template", _template, ["{sendmail_app}", "-i", "-f", "{sender}"],
            "Its command line; {sendmail_app} and {sender} are filled in, the "
            "recipients follow --, a -t is dropped (never read from headers).",
            reference=("its command line (split like a shell would, never run by one); "
                       "``{sendmail_app}`` and ``{sender}`` are filled in, the recipients "
                       "always follow ``--``; a ``-t`` (as in pyramid_mailer's default) is "
                       "dropped with a warning")),
    Setting("claim_timeout", _claim_timeout, 3600.0,
            "A message claimed by a processor that died goes back to the queue after "
            "this (a live one refreshes its claim -- the spool's heartbeat, the SQL "
            "outbox's lease -- every claim_timeout/4, at least every minute, so a longer "
            "send keeps it); at least 1s.",
            reference=("a message claimed by a processor that died goes back to the queue after "
                       "this; a live processor refreshes its claim (the spool's heartbeat, the "
                       "SQL outbox's lease) every ``claim_timeout``/4, at least every minute, "
                       "so a longer send keeps it (at least ``1s``; see :doc:`Claims "
                       "<operating>`)")),
    Setting("commit_grace", _at_least(MIN_COMMIT_GRACE, "a shorter grace could clean up "
                                      "the files of a commit that is still going on"), 3600.0,
            "A message a crashed process left half-committed in the spool is cleaned up "
            "(tmp/) or resolved (prepared/) once it is this old; at least 1m.",
            reference=("what a process killed mid-commit left in the spool is resolved once "
                       "this old (see :doc:`Crashes and the commit <transactions>`); at least "
                       "``1m`` (a live commit's files must not be cleaned up)")),
    Setting("commit_check", _callable, None,
            "Dotted name of check(message_id, registry) -> True/False/None: did the "
            "transaction of a message left in prepared/ commit? (see the docs, Transactions)",
            reference=("``pkg.module:check``, asked whether the transaction of an in-doubt "
                       "message committed (see :doc:`Crashes and the commit <transactions>`)")),
    Setting("retry_initial", parse_duration, 300.0, "First retry delay after a temporary failure.",
            reference="first retry delay after a temporary failure"),
    Setting("retry_max", parse_duration, 4000.0, "Longest delay between two retries.",
            reference=("longest delay between retries (doubling from ``retry_initial``, \u00b120% "
                       "jitter)")),
    Setting("max_queue_time", parse_duration, 5 * 86400.0,
            "A message still undelivered after this is dead-lettered.",
            reference="a message still undelivered after this is dead-lettered"),
    Setting("processor", _choice(PROCESSOR_MODES), "external",
            "Who delivers the queue: external (txmail-qp from cron or as a service) or "
            "thread (a background thread in each web process, started by its first request; "
            "see the docs, Operating it).",
            reference=("who delivers the queue: ``external`` (``txmail-qp`` from cron or as a "
                       "service) or ``thread`` (a thread in each web process; see :doc:`In-app "
                       "processor thread <operating>`)")),
    Setting("workers", lambda v: _int(v, 1, 64), 4,
            "Parallel SMTP connections of txmail-qp (each reused for many messages).",
            reference=("parallel SMTP connections of ``txmail-qp``, each reused for many "
                       "messages")),
    Setting("processes", lambda v: _int(v, 1, MAX_PROCESSES), None,
            "Processes of txmail-qp (one pass and --daemon), each with mail.workers "
            "threads; default: the usable cores (1: a single process).",
            reference=("processes of ``txmail-qp`` (one pass and ``--daemon``), each with "
                       "``mail.workers`` threads; ``1``: one process (see :doc:`Several "
                       "processes <operating>`)"),
            default_text="usable cores"),
    Setting("connection_max_messages", lambda v: _int(v, 1, 10 ** 9), 1000,
            "Messages sent over one SMTP connection before it is closed and reopened.",
            reference="messages per connection before it is closed and reopened"),
    Setting("fallback_hosts", _hosts, None,
            "Relays tried in order when mail.host is unreachable, and for the "
            "recipients of a message a relay answered 4xx (host or host:port, "
            "comma-separated; the port defaults to mail.port).",
            reference=("relays tried in order when ``mail.host`` is unreachable or answers 4xx "
                       "to a message (``host`` or ``host:port``, comma-separated)")),
    Setting("host_rest", parse_duration, 300.0,
            "A relay that keeps failing to set up a session is not tried again for this "
            "long (one answering 4xx to a message is not rested).",
            reference=("a relay that keeps failing to set up a session is not tried again for "
                       "this long")),
    Setting("rate_limit", _rate, None,
            "Most messages per second txmail-qp sends, across all workers (unset or 0: no "
            "limit).",
            reference=("most messages per second, across workers; ``0`` or unset: no limit; "
                       "``nan``, ``inf``, negative and below one a day are refused")),
    Setting("poll_interval", _at_least(MIN_POLL_INTERVAL, "polling more often is a busy "
                                       "loop"), 1.0,
            "txmail-qp --daemon: how often to look for new mail when inotify is unavailable; "
            "at least 0.01s.",
            reference=("``--daemon`` without inotify: how often to look for new mail; at least "
                       "``0.01s`` (less is a busy loop)")),
    Setting("qp_events", _choice(QP_EVENTS_MODES), "app",
            "txmail-qp: app loads the application so that its subscribers see MailSent, "
            "MailDeferred and MailFailed; none skips loading it (a faster start, no "
            "events; the app warns at start-up if it subscribes to them).",
            reference=("``txmail-qp``: ``app`` loads the application so its subscribers see "
                       "``MailSent``, ``MailDeferred`` and ``MailFailed``; ``none`` does not (a "
                       "faster start, no events; see :doc:`Events or a fast start <operating>`)")),
    Setting("file_path", _path, None,
            "mail.delivery = file: the directory each committed message is written to as .eml.",
            reference=("``mail.delivery = file``: the directory the ``.eml`` files go into "
                       "(created 0700)")),
    Setting("top_level_directory", _str, None,
            "pyramid_mailer's DebugMailer directory: config.include('pyramid_txmail.debug') "
            "writes there when mail.file_path is not set (default ./mail).",
            reference=("pyramid_mailer's ``DebugMailer`` key: where ``pyramid_txmail.debug`` "
                       "writes when ``mail.file_path`` is not set"),
            default_text="./mail"),
    Setting("redirect_to", _addresses, (),
            "Staging: send every message to these addresses instead of its recipients.",
            reference=("staging: every message goes to these addresses instead (comma-separated "
                       "or one per line; see :doc:`Staging redirect <devtools>`)")),
    # DKIM signing at send time (pyramid_txmail.relay.dkim; docs/sending.rst).
    Setting("dkim_private_key", _path, None,
            "DKIM: the PEM RSA private key of mail.dkim_domain (mode 0600 or 0400, owned "
            "by the process user); read at startup.",
            reference=("DKIM: the PEM RSA private key of ``mail.dkim_domain``, an absolute "
                       "path; mode 0600 or 0400, owned by the process's user; read at startup "
                       "(see :doc:`DKIM signing <sending>`)")),
    Setting("dkim_selector", _str, None, "DKIM: the selector of mail.dkim_private_key.",
            reference="DKIM: the selector of that key"),
    Setting("dkim_domain", _str, None,
            "DKIM: the signing domain (d=) of mail.dkim_private_key; messages whose From "
            "is in it (or a subdomain) are signed.",
            reference=("DKIM: its signing domain (``d=``); mail whose From is in it or a "
                       "subdomain is signed")),
    Setting("dkim_domains", _dkim_domains, None,
            "DKIM for several domains: lines of 'domain selector /path/key.pem'; the From "
            "domain picks the key.",
            reference="DKIM for several domains: one ``domain selector /path/key.pem`` a line"),
    Setting("dkim_headers", _dkim_headers, None,
            "DKIM: header fields signed when present (From always; default From, Sender, "
            "Reply-To, To, Cc, Subject, Date, Message-ID, ...).",
            reference=("header fields signed when present (From always; see :doc:`DKIM signing "
                       "<sending>`)"),
            default_text="the usual set"),
    Setting("dkim_canonicalization", _choice(("relaxed/relaxed", "relaxed/simple",
                                              "simple/relaxed", "simple/simple")), None,
            "DKIM header/body canonicalization (default relaxed/relaxed).",
            reference="DKIM header/body canonicalization (``relaxed`` or ``simple`` each)",
            default_text="relaxed/relaxed"),
    # The preview page (pyramid_txmail.preview).
    Setting("preview_allow", _bool, False,
            "Allow the preview page outside development (see the docs, Development tools).",
            reference=("allow the preview page outside development (see :doc:`Preview page "
                       "<devtools>`)")),
    Setting("preview_dirs", _paths, (),
            "Extra directories of .eml files the preview page lists (whitespace-separated).",
            reference=("more directories of ``.eml`` files for the preview page "
                       "(whitespace-separated)")),
    Setting("preview_prefix", _url_prefix, "/_mail", "URL path of the preview page.",
            reference="URL path of the preview page"),
    # Operating txmail-qp (pyramid_txmail.processor.metrics; needs the ``ops`` extra).
    Setting("metrics_port", _port, None,
            "txmail-qp --daemon: serve Prometheus /metrics and /healthz on this TCP port "
            "(off when unset; needs pyramid_txmail[ops]).",
            reference=("``txmail-qp --daemon`` serves ``/metrics`` and ``/healthz`` on this "
                       "port (see :doc:`Operating it: metrics, health and systemd <operating>`; "
                       "needs ``pyramid_txmail[ops]``)")),
    Setting("metrics_host", _str, "127.0.0.1",
            "The address mail.metrics_port listens on (0.0.0.0: every interface).",
            reference="the address ``mail.metrics_port`` listens on"),
    Setting("metrics_file", _path, None,
            "txmail-qp: write the metrics in the node_exporter textfile-collector format "
            "to this file after each pass (atomically; needs pyramid_txmail[ops]); its "
            "counters add up across passes (kept in .NAME.counters.json beside it).",
            reference=("each pass writes the metrics there for node_exporter's textfile "
                       "collector (atomically; needs ``pyramid_txmail[ops]``); its counters add "
                       "up across passes")),
    # The SQL outbox, in the mailer (pyramid_txmail.mailer.sqloutbox).
    Setting("queue_session", _session_finder, "dbsession",
            "With the SQL outbox (mail.queue_url): the application's SQLAlchemy session a "
            "send writes its row through -- a request attribute (request.dbsession) or a "
            "dotted name pkg.module:function called with the request.",
            reference=("with the SQL outbox (``mail.queue_url``): the application's SQLAlchemy "
                       "session a send writes its row through -- a request attribute "
                       "(``request.dbsession``), or ``pkg.module:function`` called with the "
                       "request (see :doc:`The queue in your database (SQL outbox) <queues>`)")),
)


_UNITS = ((86400, "d"), (3600, "h"), (60, "m"))


def _duration_text(seconds):
    """600.0 -> ``10m``: the largest unit that divides it, as a person writes it."""
    for size, unit in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"


def shown_default(setting):
    """The default as the reference shows it, written so that ``setting.parse`` reads
    it back as the default (tests/test_settings.py checks that): ``30s``, ``false``,
    ``{sendmail_app} -i -f {sender}``; ``--`` for a key that is unset by default."""
    value = setting.default
    if setting.default_text:
        return setting.default_text
    if value is None or value == ():
        return "--"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _duration_text(value)
    if isinstance(value, list):
        return " ".join(value)
    return str(value)
