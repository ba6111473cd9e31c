"""``txmail-qp``: deliver the mail queue, one pass (cron) or as a daemon.

A thin shell around :class:`pyramid_txmail.processor.processor.Processor`: read the
ini, set up logging, load the app (so that event subscribers run), then make
one pass and exit, or with ``--daemon`` hand over to
:class:`pyramid_txmail.processor.daemon.Daemon` until SIGTERM/SIGINT.  Configuration
problems are one line on stderr and exit status 78 (``EX_CONFIG``), so that a
cron mail or a systemd journal says what to fix instead of showing a
traceback.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import logging
import os
import sys
import textwrap

from ..processor.daemon import Daemon, Signals
from ..processor import supervisor
from ..processor.operate import Operations
from ..queue import open_queue
from ..queue.interface import QueueUnavailable
from ..queue.wakeup import WATCH_MODES, Waker, WatchUnavailable
from ..settings import SETTINGS, parse_settings, settings_prefix
from ..util.config_error import is_configuration_error
from ..util.logformat import apply_log_format
from .ini import IniFile, is_plain_ini
from .queue_args import ArgumentParser
from .streams import guard_streams, quiet_broken_pipe
from ..util.printable import get_logger, printable

PROG = "txmail-qp"
EX_OK = 0
EX_SOFTWARE = 1
EX_USAGE = 2
EX_CONFIG = 78

log = get_logger("pyramid_txmail.scripts.qp")

_USED = ("queue_path", "queue_url", "host", "port", "username", "password", "tls", "ssl",
         "keyfile", "certfile", "tls_cafile", "timeout", "data_timeout", "debug",
         "claim_timeout", "retry_initial", "retry_max", "max_queue_time", "workers",
         "poll_interval", "qp_events", "processes")

DESCRIPTION = """\
Deliver the mail waiting in a pyramid_txmail queue -- the spool directory
(mail.queue_path), or the SQL outbox in the application's database when
mail.queue_url is set: make ONE pass over it and exit, or with --daemon keep
delivering until SIGTERM or SIGINT.  Each queued message (new/) and each
deferred message whose retry is due is sent through the SMTP relay.  A
recipient that accepts is never sent the message again; a temporary failure
(4yz, dropped connection) defers the message (deferred/) with an exponential
backoff; a permanent failure (5yz), or a message still undelivered after
mail.max_queue_time, is dead-lettered (failed/) with the reason.  Several
txmail-qp processes may run on one queue at the same time (on an SQL outbox
in PostgreSQL, on any number of machines).
"""


def _epilog():
    docs = {s.name: s.doc for s in SETTINGS}
    lines = [textwrap.fill(docs[name], 79, initial_indent=f"  mail.{name:<15} ",
                           subsequent_indent=" " * 23) for name in _USED if name in docs]
    return ("settings, read from the [app:NAME] section of CONFIG_URI:\n"
            + "\n".join(lines) + "\n"
            "  Any other mail.* key must still be valid (an unknown key is an error).\n"
            "\n"
            "logging:\n"
            "  Configured from the ini's [loggers]/[handlers]/[formatters] sections\n"
            "  when it has them, else INFO and above go to stderr.  -v adds DEBUG\n"
            "  output of pyramid_txmail, -q keeps only warnings and errors.\n"
            "\n"
            "daemon (--daemon):\n"
            "  Passes over the queue whenever mail arrives (noticed with inotify in\n"
            "  the spool's new/, LISTEN/NOTIFY on PostgreSQL, or by looking every\n"
            "  mail.poll_interval with --watch poll or on SQLite),\n"
            "  when a deferred retry or a dead processor's stale claim comes due,\n"
            "  and at least every minute.  SIGTERM or SIGINT (Ctrl-C): the\n"
            "  message(s) in flight are finished, the rest stay queued, exit 0; a\n"
            "  second signal changes nothing (SIGKILL abandons the message in\n"
            "  flight: it is sent again after mail.claim_timeout).  SIGHUP:\n"
            "  re-open the ini's log files (for logrotate) and make a pass now.\n"
            "  SMTP connections are closed after every pass, so an idle daemon\n"
            "  holds none.  In one-pass mode SIGTERM/SIGINT also let the message in\n"
            "  flight finish and end the pass there.\n"
            "\n"
            "exit status:\n"
            "  0   the pass ran (messages deferred for a retry are normal); with\n"
            "      --daemon: stopped by SIGTERM or SIGINT\n"
            "  1   unexpected error (logged with its traceback), also when the\n"
            "      pass went on past a message that could not be handled\n"
            "  2   usage error (bad command line)\n"
            "  78  configuration error: missing ini file or section, bad or unknown\n"
            "      mail.* setting, no mail.queue_path (nor mail.queue_url), unusable\n"
            "      spool directory or database,\n"
            "      an application that cannot be loaded (see --no-app), --watch\n"
            "      inotify where inotify is unavailable\n"
            "\n"
            "example crontab line (a pass every minute, quiet unless something fails):\n"
            "  * * * * *  /srv/app/env/bin/txmail-qp /srv/app/production.ini -q\n"
            "\n"
            "metrics and health (mail.metrics_port, mail.metrics_file; pyramid_txmail[ops]):\n"
            "  --daemon serves /metrics and /healthz on mail.metrics_port; every pass\n"
            "  writes the metrics to mail.metrics_file (textfile collector).  Under\n"
            "  systemd Type=notify it sends READY=1, STATUS=, WATCHDOG=1, STOPPING=1.\n"
            "\n"
            "example systemd unit (/etc/systemd/system/txmail-qp.service), see\n"
            "docs/operating.rst and docs/examples/txmail-qp.service:\n"
            "  [Service]\n"
            "  Type=notify\n"
            "  WatchdogSec=120\n"
            "  User=app\n"
            "  ExecStart=/srv/app/env/bin/txmail-qp /srv/app/production.ini --daemon\n"
            "  Restart=on-failure\n"
            "  KillSignal=SIGTERM\n"
            "  TimeoutStopSec=720  # >= mail.data_timeout + 3 x mail.timeout: a message in flight\n")


class ConfigError(Exception):
    """A configuration problem, reported as one line with exit status 78."""


def build_parser():
    parser = ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_uri", metavar="CONFIG_URI",
                        help="the application's ini file, e.g. production.ini "
                             "(or production.ini#NAME)")
    parser.add_argument("--app-name", default=None, metavar="NAME",
                        help="the [app:NAME] section to read (default: main)")
    parser.add_argument("--no-app", action="store_true",
                        help="do not load the application: no event subscribers "
                             "run, only the settings are read (as with "
                             "mail.qp_events = none)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true",
                       help="also log DEBUG messages of pyramid_txmail")
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="log only warnings and errors (no pass summary)")
    parser.add_argument("--daemon", action="store_true",
                        help="keep delivering until SIGTERM or SIGINT instead of "
                             "making one pass (see 'daemon' below)")
    parser.add_argument("--workers", type=_workers, default=None, metavar="N",
                        help="parallel SMTP connections, 1 to 64 (overrides "
                             "mail.workers)")
    parser.add_argument("--processes", type=_processes, default=None, metavar="N",
                        help="processes, each with its workers, 1 to 64 (overrides "
                             "mail.processes; default: the usable cores)")
    parser.add_argument("--watch", choices=WATCH_MODES, default=None,
                        help="with --daemon, how new mail is noticed: inotify, poll "
                             "(every mail.poll_interval) or auto (the default: "
                             "inotify, except on a network file system such as "
                             "NFS or where inotify is unavailable)")
    return parser


def _workers(text):
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 64")
    return number


def _processes(text):
    try:
        return _workers(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 64"
                                         ) from None


def split_uri(config_uri, app_name):
    """``file.ini#name`` → (``file.ini``, ``name``); --app-name wins, default main."""
    path, _, fragment = config_uri.partition("#")
    return path, app_name or fragment or "main"


def ini_loader(path):
    """What reads the ini: a plain .ini file directly (:mod:`.ini`, the rules of
    plaster_pastedeploy without plaster's loader lookup), anything else through
    plaster as before."""
    if is_plain_ini(path):
        return IniFile(path)
    import plaster

    return plaster.get_loader(path)


def _is_plaster_error(exc):
    plaster = sys.modules.get("plaster")
    return plaster is not None and isinstance(exc, plaster.PlasterError)


def read_app_settings(path, app_name):
    """The raw ``[app:NAME]`` settings, without importing the application."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such ini file")
    try:
        loader = ini_loader(path)
        sections = loader.get_sections()
        if f"app:{app_name}" not in sections:
            raise ConfigError(f"{path}: no [app:{app_name}] section")
        return dict(loader.get_settings(f"app:{app_name}"))
    except configparser.Error as exc:
        raise ConfigError(_ini_error(path, exc)) from None
    except Exception as exc:
        if not isinstance(exc, (OSError, ValueError)) and not _is_plaster_error(exc):
            raise
        raise ConfigError(f"{path}: cannot read the ini file: {exc}") from None


def _ini_error(path, exc):
    """An ini syntax error, named by section, key or line -- never by its text.

    configparser's messages quote the value they choke on, which may be the
    password (a ``%`` in it), so only the section and key are named.
    """
    where = " ".join(f"{k} {getattr(exc, k)!r}" for k in ("section", "option", "lineno")
                     if getattr(exc, k, None) is not None)
    if not where and getattr(exc, "errors", None):  # ParsingError: line numbers only
        where = "line " + ", ".join(str(number) for number, _ in exc.errors)
    hint = (" (a literal % must be written %%)"
            if isinstance(exc, configparser.InterpolationError) else "")
    return (f"{path}: cannot read the ini file: {type(exc).__name__}"
            + (f" at {where}" if where else "") + hint)


def setup_logging(path, verbose=False, quiet=False):
    """The ini's logging config if it has one, else INFO to stderr."""
    try:
        loader = ini_loader(path)
        has_loggers = "loggers" in loader.get_sections()
        if has_loggers:
            loader.setup_logging()
    except Exception as exc:
        raise ConfigError(f"{path}: bad logging configuration: {exc}") from None
    if not has_loggers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if verbose:
        logging.getLogger("pyramid_txmail").setLevel(logging.DEBUG)
    elif quiet:
        logging.getLogger("pyramid_txmail").setLevel(logging.WARNING)


def mail_settings(raw, path, app_name, prog=PROG, needs="to deliver from"):
    """Parse mail.*; the processor cannot run without a queue to read."""
    try:
        settings = parse_settings(raw, warn=not supervisor.is_child())  # the parent warned
    except Exception as exc:
        if not is_configuration_error(exc):
            raise
        raise ConfigError(f"{path} [app:{app_name}]: {exc}") from None
    if not settings.queue_path and not getattr(settings, "queue_url", None):
        prefix = settings_prefix(raw)
        raise ConfigError(f"{path} [app:{app_name}]: {prefix}queue_path is not set; {prog} "
                          f"needs the spool directory {needs} (or {prefix}queue_url, the "
                          "SQL outbox)")
    return settings


def open_queue_or_exit(settings):
    """The queue the application writes (:func:`pyramid_txmail.queue.open_queue`);
    a missing spool is an error, never created here (it would hide a wrong path)."""
    try:
        return open_queue(settings, create=False)
    except QueueUnavailable as exc:
        raise ConfigError(str(exc)) from None


def wait_for_tables(queue, daemon, signals, every=5.0):
    """An SQL outbox whose tables were never created: one line naming ``init-db``.

    A one-pass run stops there (exit 78, as ``txmail-queue`` does); a daemon says it
    once and looks again every ``every`` seconds, silently, until the tables are there
    (a deployment that migrates after it starts the workers) or it is stopped (then
    False).  Without this, each step of each pass logged "no such table".
    """
    missing = getattr(queue, "missing_tables", lambda: None)()
    if not missing:
        return True
    problem = (f"the database of mail.queue_url ({queue.where}) has no outbox tables "
               f"({', '.join(missing)}): create them with `txmail-queue CONFIG_URI "
               "init-db`, or with the application's Alembic migrations")
    if not daemon:
        raise ConfigError(problem)
    said = supervisor.says_for_all()  # several processes: the first says it for all
    if said:
        log.error("%s; waiting for them", problem)
    while missing:
        if signals.stop.wait(every):
            return False
        missing = queue.missing_tables()
    if said:
        log.info("the outbox tables are in %s now; starting", queue.where)
    return True


@contextlib.contextmanager
def app_registry(path, app_name, load):
    """The application's registry (closed afterwards), or None with --no-app."""
    if not load:
        yield None
        return
    from pyramid.paster import bootstrap

    try:
        env = bootstrap(f"{path}#{app_name}")
    except Exception as exc:
        log.debug("loading [app:%s] from %s failed", app_name, path, exc_info=True)
        raise ConfigError(f"{path}: cannot load the application [app:{app_name}]: "
                          f"{type(exc).__name__}: {exc} (run with -v for the traceback, "
                          "or --no-app to deliver without loading the application)") from None
    try:
        yield env["registry"]
    finally:
        env["closer"]()


def load_app(args, settings):
    """Whether to load the application: its subscribers see the processor's events
    (``mail.qp_events = app``, the default); ``--no-app`` or ``mail.qp_events = none``
    skip it -- no framework and no application imports, a start in a fraction of
    the time, and no events (the app warns at start-up about subscribers to them)."""
    return not args.no_app and settings.qp_events == "app"


def _check_tables(queue, daemon):
    """An SQL outbox without its tables (or with another version's) is a configuration
    problem: exit 78 for one pass; a daemon says so and waits for the migration
    (its passes then repeat it at most once a minute, without a traceback)."""
    check = getattr(queue, "check_tables", None)
    if check is None:
        return
    from ..queue.sql.tables import IncompatibleTables

    try:
        check()
    except IncompatibleTables as exc:
        if not daemon:
            raise ConfigError(str(exc)) from None
        log.error("%s", exc)
    except Exception as exc:  # unreachable: the pass says so in its own words
        log.debug("cannot check the outbox tables: %s", exc)


def run(args, signals, waker):
    """Everything after argument parsing; ConfigError for what a person must fix."""
    path, app_name = split_uri(args.config_uri, args.app_name)
    raw = getattr(args, "raw_settings", None) or read_app_settings(path, app_name)
    setup_logging(path, args.verbose, args.quiet)
    settings = mail_settings(raw, path, app_name)
    apply_log_format(settings.log_format)
    if args.workers is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
    settings = supervisor.for_this_process(settings)  # a child: its share (see --processes)
    queue = open_queue_or_exit(settings)
    supervisor.prefer_own_share(queue, args.daemon)  # a child: its share first (issue 14)
    if hasattr(queue, "stopping"):  # the SQL outbox: a SIGTERM ends its waits for the database
        queue.stopping = signals.stop
    if not wait_for_tables(queue, args.daemon, signals):
        return EX_OK  # stopped while waiting for them
    _check_tables(queue, args.daemon)  # there, but another version's?
    watcher = None
    if args.daemon:
        try:
            watcher = queue.watcher(settings, args.watch or "auto")
        except WatchUnavailable as exc:
            raise ConfigError(f"--watch {args.watch}: {exc}; use --watch poll") from None
    try:
        with app_registry(path, app_name, load_app(args, settings)) as registry:
            # transport None: one SMTP connection per worker (mail.workers),
            # opened in each pass and closed at its end
            # metrics, /healthz, mail.metrics_file, systemd notify: as the settings ask
            ops = Operations(queue, settings, daemon=watcher is not None)
            run_pass = ops.processor(queue, None, settings, registry=registry).run_once
            run_pass = supervisor.reporting(run_pass)  # a child tells its parent
            if watcher is not None:
                daemon = Daemon(queue, settings, run_pass, watcher, signals, waker)
                watcher = None  # the daemon closes it
                with ops.serving():
                    daemon.run()
                return EX_OK
            stats = run_pass(signals.stop)
    finally:
        if watcher is not None:
            watcher.close()
    if signals.stop.is_set():
        log.info("txmail-qp pass over %s ended early on %s (the message in flight was "
                 "finished; the rest waits for the next pass): %s", queue.where,
                 signals.first_stop_name(), stats.summary())
    else:
        log.info("txmail-qp pass over %s: %s", queue.where, stats.summary())
    return EX_SOFTWARE if stats.errors else EX_OK


def main(argv=None):
    guard_streams()  # before argparse, which prints --help and usage errors
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    if args.watch and not args.daemon:
        parser.error("--watch only applies with --daemon")
    if not supervisor.is_child():
        code = _supervise(args, argv)
        if code is not None:
            return code
    waker = Waker() if args.daemon else None
    # Called with argv None, this is the txmail-qp process itself: its signals
    # stay taken until it exits (see Signals: a late SIGTERM must not turn exit
    # status 0 into -15).  Called with arguments (tests, a wrapper), it puts
    # them back for the caller.
    try:
        with Signals(waker, handle_hup=args.daemon, restore=argv is not None) as signals:
            code = run(args, signals, waker)
            sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
            return code
    except BrokenPipeError:  # its output piped into a reader that went away
        return quiet_broken_pipe()
    except Exception as exc:
        if not (isinstance(exc, ConfigError) or is_configuration_error(exc)):
            log.exception("%s: unexpected error", PROG)
            return EX_SOFTWARE
        message = printable(" ".join(str(exc).split()))
        if not supervisor.tell_parent("config", message):  # the parent says it once
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return EX_CONFIG
    finally:
        if waker is not None:
            waker.close()


def _supervise(args, argv):
    """With several processes (mail.processes, --processes) this one becomes their parent
    and returns their exit status (:mod:`pyramid_txmail.processor.supervisor`); None: run
    as one process.  The ini is read here, before any thread exists, to fork from it."""
    path, app_name = split_uri(args.config_uri, args.app_name)
    try:
        args.raw_settings = read_app_settings(path, app_name)  # read once (run() uses it)
    except ConfigError:
        return None  # run() says it
    processes = args.processes or supervisor.processes_setting(args.raw_settings)
    if not processes or processes <= 1:  # one process (or a bad value: run() says it)
        return None
    try:
        raw = args.raw_settings
        setup_logging(path, args.verbose, args.quiet)
        settings = mail_settings(raw, path, app_name)
        apply_log_format(settings.log_format)
        if args.workers is not None:
            settings = dataclasses.replace(settings, workers=args.workers)
        # argv None: the txmail-qp process itself (see main's Signals)
        return supervisor.supervise(processes, settings, args.daemon, lambda: main(argv),
                                    restore=argv is not None)
    except Exception as exc:
        if not (isinstance(exc, ConfigError) or is_configuration_error(exc)):
            raise
        print(f"{PROG}: error: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return EX_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
