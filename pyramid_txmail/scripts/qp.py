"""``txmail-qp``: one delivery pass over the mail spool, for cron or a timer.

A thin shell around :class:`pyramid_txmail.processor.Processor`: read the
ini, set up logging, load the app (so that event subscribers run), make one
pass, report it, exit.  Configuration problems are one line on stderr and
exit status 78 (``EX_CONFIG``), so that a cron mail or a systemd journal says
what to fix instead of showing a traceback.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import logging
import os
import sys
import textwrap

import plaster
from pyramid.exceptions import ConfigurationError

from ..processor import Processor
from ..settings import SETTINGS, parse_settings
from ..spool import Spool, SpoolError

PROG = "txmail-qp"
EX_OK = 0
EX_SOFTWARE = 1
EX_USAGE = 2
EX_CONFIG = 78

log = logging.getLogger("pyramid_txmail.scripts.qp")

_USED = ("queue_path", "host", "port", "username", "password", "tls", "ssl", "keyfile",
         "certfile", "tls_cafile", "timeout", "debug", "claim_timeout", "retry_initial",
         "retry_max", "max_queue_time")

DESCRIPTION = """\
Deliver the mail waiting in a pyramid_txmail spool: make ONE pass over the
spool directory (mail.queue_path) and exit.  Each message in new/ and each
deferred message whose retry is due is sent through the SMTP relay.  A
recipient that accepts is never sent the message again; a temporary failure
(4yz, dropped connection) moves the message to deferred/ with an exponential
backoff; a permanent failure (5yz), or a message still undelivered after
mail.max_queue_time, is dead-lettered into failed/ with the reason.  Several
txmail-qp processes may run on one spool at the same time.
"""


def _epilog():
    docs = {s.name: s.doc for s in SETTINGS}
    lines = [textwrap.fill(docs[name], 79, initial_indent=f"  mail.{name:<15} ",
                           subsequent_indent=" " * 23) for name in _USED]
    return ("settings, read from the [app:NAME] section of CONFIG_URI:\n"
            + "\n".join(lines) + "\n"
            "  Any other mail.* key must still be valid (an unknown key is an error).\n"
            "\n"
            "logging:\n"
            "  Configured from the ini's [loggers]/[handlers]/[formatters] sections\n"
            "  when it has them, else INFO and above go to stderr.  -v adds DEBUG\n"
            "  output of pyramid_txmail, -q keeps only warnings and errors.\n"
            "\n"
            "exit status:\n"
            "  0   the pass ran (messages deferred for a retry are normal)\n"
            "  1   unexpected error (logged with its traceback), also when the\n"
            "      pass went on past a message that could not be handled\n"
            "  2   usage error (bad command line)\n"
            "  78  configuration error: missing ini file or section, bad or unknown\n"
            "      mail.* setting, no mail.queue_path, unusable spool directory,\n"
            "      an application that cannot be loaded (see --no-app)\n"
            "\n"
            "example crontab line (a pass every minute, quiet unless something fails):\n"
            "  * * * * *  /srv/app/env/bin/txmail-qp /srv/app/production.ini -q\n")


class ConfigError(Exception):
    """A configuration problem, reported as one line with exit status 78."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_uri", metavar="CONFIG_URI",
                        help="the application's ini file, e.g. production.ini "
                             "(or production.ini#NAME)")
    parser.add_argument("--app-name", default=None, metavar="NAME",
                        help="the [app:NAME] section to read (default: main)")
    parser.add_argument("--no-app", action="store_true",
                        help="do not load the application: no event subscribers "
                             "run, only the settings are read")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true",
                       help="also log DEBUG messages of pyramid_txmail")
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="log only warnings and errors (no pass summary)")
    # A future --daemon (keep draining, signals, workers) belongs here.
    return parser


def split_uri(config_uri, app_name):
    """``file.ini#name`` → (``file.ini``, ``name``); --app-name wins, default main."""
    path, _, fragment = config_uri.partition("#")
    return path, app_name or fragment or "main"


def read_app_settings(path, app_name):
    """The raw ``[app:NAME]`` settings, without importing the application."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such ini file")
    try:
        sections = plaster.get_sections(path)
        if f"app:{app_name}" not in sections:
            raise ConfigError(f"{path}: no [app:{app_name}] section")
        return dict(plaster.get_settings(path, f"app:{app_name}"))
    except configparser.Error as exc:
        raise ConfigError(_ini_error(path, exc)) from None
    except (plaster.PlasterError, OSError, ValueError) as exc:
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
        has_loggers = "loggers" in plaster.get_sections(path)
        if has_loggers:
            plaster.setup_logging(path)
    except Exception as exc:
        raise ConfigError(f"{path}: bad logging configuration: {exc}") from None
    if not has_loggers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if verbose:
        logging.getLogger("pyramid_txmail").setLevel(logging.DEBUG)
    elif quiet:
        logging.getLogger("pyramid_txmail").setLevel(logging.WARNING)


def mail_settings(raw, path, app_name):
    """Parse mail.*; the processor cannot run without a spool to read."""
    try:
        settings = parse_settings(raw)
    except ConfigurationError as exc:
        raise ConfigError(f"{path} [app:{app_name}]: {exc}") from None
    if not settings.queue_path:
        raise ConfigError(f"{path} [app:{app_name}]: mail.queue_path is not set; "
                          "txmail-qp needs the spool directory to deliver from")
    return settings


def open_spool(settings):
    try:
        return Spool(settings.queue_path)
    except SpoolError as exc:
        raise ConfigError(f"mail.queue_path: {exc}") from None


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


def run(args):
    """Everything after argument parsing; ConfigError for what a person must fix."""
    path, app_name = split_uri(args.config_uri, args.app_name)
    raw = read_app_settings(path, app_name)
    setup_logging(path, args.verbose, args.quiet)
    settings = mail_settings(raw, path, app_name)
    spool = open_spool(settings)
    with app_registry(path, app_name, not args.no_app) as registry:
        # transport None: one SMTP connection per worker (mail.workers)
        stats = Processor(spool, None, settings, registry=registry).run_once()
    log.info("txmail-qp pass over %s: %s", spool.path, stats.summary())
    return EX_SOFTWARE if stats.errors else EX_OK


def main(argv=None):
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    try:
        return run(args)
    except (ConfigError, ConfigurationError) as exc:
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EX_CONFIG
    except Exception:
        log.exception("%s: unexpected error", PROG)
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
