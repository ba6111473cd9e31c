"""``txmail-queue``: look into the mail spool and act on it, for an operator.

``status``, ``list`` and ``show`` only read; ``retry`` puts dead letters (or
deferred mail) back into ``new/``; ``release`` puts back a claim whose
processor died; ``purge`` deletes old dead letters.  All of
it is safe while ``txmail-qp`` runs (see :mod:`pyramid_txmail.queue.maildir.spool_admin`,
which does the work; this module parses arguments and prints).

It reads only the ``mail.*`` settings of the ini's ``[app:NAME]`` section --
the application is not loaded -- and never prints a setting, so the SMTP
password cannot reach the terminal.  Message text is printed with control
characters escaped, so that a hostile Subject cannot drive the terminal.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from pyramid.exceptions import ConfigurationError

from ..queue.maildir import spool_admin as admin
from ..util.printable import get_logger
from ..settings import parse_duration, settings_prefix
from . import queue_text
from .queue_text import clean
from .qp import (EX_CONFIG, EX_OK, EX_SOFTWARE, EX_USAGE, ConfigError, mail_settings,
                 open_spool, read_app_settings, setup_logging, split_uri)

PROG = "txmail-queue"
EX_FAILED = EX_SOFTWARE  # the operation failed for a message, or it was not found

log = get_logger("pyramid_txmail.scripts.queue")

DESCRIPTION = """\
Look into a pyramid_txmail spool (mail.queue_path) and act on it: counts and
ages, one line per message, one message in full, retry dead letters, remove
old ones.  Only the mail.* settings of the ini's [app:NAME] section are read
(the application is not loaded).  Safe while txmail-qp runs.

states: queued (new/), in_progress (cur/, being sent), deferred (waiting for
a retry), failed (dead letters, with the reason), tmp (being written).
"""

EPILOG = """\
examples:
  txmail-queue production.ini status
  txmail-queue production.ini status --json
  txmail-queue production.ini list --state failed
  txmail-queue production.ini show 1732523000.M1234
  txmail-queue production.ini show '<welcome-42@example.com>'
  txmail-queue production.ini retry --all-failed
  txmail-queue production.ini release --stale
  txmail-queue production.ini purge --state failed --older-than 7d --dry-run

Each command has its own --help, e.g. txmail-queue production.ini list --help

exit status:
  0   done
  1   the operation failed: no such message, an ambiguous id, a message in a
      state the command does not apply to, a file taken by a processor meanwhile
  2   usage error (bad command line, unknown state, bad duration)
  78  configuration error: missing ini file or section, bad or unknown mail.*
      setting, no mail.queue_path, no spool directory there
"""

STATE_HELP = ("queued (or new), in_progress (or cur), deferred, failed, tmp")


def _duration(text):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _state(text):
    try:
        return admin.state_of(text.strip().lower())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(parser):
    """Options accepted before and after the command (SUPPRESS keeps the first one given)."""
    parser.add_argument("--app-name", default=argparse.SUPPRESS, metavar="NAME",
                        help="the [app:NAME] section to read (default: main)")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log DEBUG output of pyramid_txmail, show tracebacks")


def _sub(subparsers, name, help, description, examples):
    parser = subparsers.add_parser(
        name, help=help, description=description,
        epilog="examples:\n" + "".join(f"  {PROG} production.ini {e}\n" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG,
        usage=f"{PROG} [-h] CONFIG_URI COMMAND [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_uri", metavar="CONFIG_URI",
                        help="the application's ini file, e.g. production.ini "
                             "(or production.ini#NAME)")
    _common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     prog=f"{PROG} CONFIG_URI")

    p = _sub(commands, "status", "counts and oldest age per state, next retry time",
             "Count the messages in each state, give the age of the oldest one\n"
             "(per state and overall, tmp/ and prepared/ not counted) and when the\n"
             "next deferred message is due.  --json prints one object with an\n"
             "integer count per state: queued, in_progress, deferred, failed, tmp,\n"
             "prepared.",
             ["status", "status --json | jq .failed"])
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _sub(commands, "list", "one line per message",
             "One line per message: id (its file name), state, age, attempts, envelope\n"
             "sender -> recipients, Subject, last error.  Oldest first within a state.",
             ["list", "list --state failed", "list --state deferred --state failed --json"])
    p.add_argument("--state", action="append", type=_state, metavar="STATE",
                   help=f"only this state (repeatable): {STATE_HELP}; "
                        "default: all but tmp")
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = _sub(commands, "show", "one message: envelope, headers, attempts, errors",
             "Show one message: state, envelope, headers, attempts, the history of\n"
             "its delivery attempts and the last error or dead-letter reason.  ID is\n"
             "the file name (as `list` shows it), a unique prefix of it, or the\n"
             "Message-ID (with or without <>).  The body only with --body.",
             ["show 1732523000.M123456P42", "show '<welcome-42@example.com>'",
              "show welcome-42@example.com --body"])
    p.add_argument("id", metavar="ID")
    p.add_argument("--body", action="store_true", help="also print the body as stored")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _sub(commands, "retry", "put dead letters (or deferred mail) back in the queue",
             "Move messages back into new/, where the next txmail-qp pass sends them.\n"
             "A dead letter (failed/) is sent afresh to its envelope, which holds\n"
             "only the recipients that failed; a deferred message becomes due now and\n"
             "keeps its attempts, so mail.max_queue_time still counts from when it was\n"
             "queued.  A message in cur/ is being sent and is refused.",
             ["retry 1732523000.M123456P42", "retry '<welcome-42@example.com>'",
              "retry --all-failed"])
    p.add_argument("ids", nargs="*", metavar="ID", help="file name, prefix or Message-ID")
    p.add_argument("--all-failed", action="store_true",
                   help="every dead letter in failed/")

    p = _sub(commands, "release", "put a claimed message (in_progress) back in the queue",
             "Move claimed messages (cur/, in_progress) back into new/, where the next\n"
             "txmail-qp pass sends them: for a claim whose processor died (each\n"
             "txmail-qp pass puts stale ones back; this does it now, or where no\n"
             "txmail-qp runs, e.g. after a clock was set back).  A claim is refused while its\n"
             "processor may still be sending it: a live process holds its lock, or its\n"
             "heartbeat is younger than mail.claim_timeout.  --force releases it all\n"
             "the same (the message may then be sent twice).  --stale releases every\n"
             "stale claim no live process holds (what txmail-qp does at each pass).",
             ["release --stale", "release 1732523000.M123456P42",
              "release 1732523000.M123456P42 --force"])
    p.add_argument("ids", nargs="*", metavar="ID", help="file name, prefix or Message-ID")
    p.add_argument("--stale", action="store_true",
                   help="every stale claim whose lock no live process holds")
    p.add_argument("--force", action="store_true",
                   help="release the given claims even if their processor may still be "
                        "sending them (a message may be sent twice)")

    p = _sub(commands, "purge", "delete old dead letters (or deferred or tmp files)",
             "Delete messages and their state files for good.  Only deferred/, failed/\n"
             "and tmp/ (files left by a crashed writer; --older-than only): mail in\n"
             "new/ and cur/ is still being delivered and is refused.  A dead letter's\n"
             "age counts from when it failed, other messages' from when they were\n"
             "queued.",
             ["purge --state failed --older-than 7d --dry-run",
              "purge --state failed --older-than 30d", "purge --state failed --all",
              "purge --state tmp --older-than 1d"])
    p.add_argument("--state", required=True, type=_state, metavar="STATE",
                   help="failed, deferred or tmp")
    age = p.add_mutually_exclusive_group()
    age.add_argument("--older-than", type=_duration, metavar="DURATION",
                     help="only messages at least this old: 30m, 12h, 7d")
    age.add_argument("--all", action="store_true", help="every message in the state")
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    return parser


def _json(value):
    """Strict JSON: a NaN or Infinity read from a state file is printed as a string."""
    print(json.dumps(_finite(value), indent=2, sort_keys=True, allow_nan=False))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print(lines):
    print("\n".join(lines))


# -- commands ----------------------------------------------------------------------

def cmd_status(spool, args, now):
    info = admin.status(spool, now)
    if args.json:
        _json(info)
    else:
        _print(queue_text.status_lines(info))
    return EX_OK


def cmd_list(spool, args, now):
    states = tuple(dict.fromkeys(args.state)) if args.state else admin.QUEUE_STATES
    found = admin.messages(spool, states)
    if args.json:
        _json([m.as_dict(now) for m in found])
    else:
        _print(queue_text.list_lines(found, states, now))
    return EX_OK


def cmd_show(spool, args, now):
    msg = admin.find(spool, args.id)
    body = admin.read_body(msg) if args.body else None
    if not args.json:
        _print(queue_text.show_lines(msg, now, body, args.body))
        return EX_OK
    data = msg.as_dict(now)
    data.update(path=msg.path, headers=[list(h) for h in msg.headers], meta=msg.meta)
    if args.body:
        data["body"] = None if body is None else body.decode("utf-8", "replace")
    _json(data)
    return EX_OK


def _report_lookup_error(exc):
    """No such message, or several (listed, so that the next try can be exact)."""
    print(f"{PROG}: {clean(exc)}", file=sys.stderr)
    for m in getattr(exc, "candidates", ())[:20]:
        print(f"  {clean(m.name)}  {admin.LABELS[m.state]}  {clean(m.message_id)}",
              file=sys.stderr)


def cmd_retry(spool, args, now):
    if bool(args.ids) == bool(args.all_failed):
        raise UsageError("retry: give message ids or --all-failed (one of the two)")
    if args.all_failed:
        targets, found = admin.messages(spool, ("failed",)), True
        if not targets:
            print("no dead letters in failed/")
    else:
        targets, found = _lookup_all(spool, args.ids)
    code = EX_OK if found else EX_FAILED
    for msg in targets:
        try:
            outcome = admin.retry(spool, msg)
        except (admin.Refused, admin.Vanished) as exc:
            print(f"{PROG}: cannot retry {msg.state}/{clean(msg.name)}: {clean(exc)}",
                  file=sys.stderr)
            code = EX_FAILED
            continue
        log.info("retry %s (%s): %s", msg.name, msg.message_id, outcome)
        print(f"{clean(msg.name)}: {outcome}")
    return code


def _lookup_all(spool, ids):
    """The messages ``ids`` name, each lookup error reported; (found, all found?)."""
    found = []
    for ident in ids:
        try:
            found.append(admin.find(spool, ident))
        except (admin.NotFound, admin.Ambiguous) as exc:
            _report_lookup_error(exc)
    return list(dict((m.name, m) for m in found).values()), len(found) == len(ids)


def cmd_release(spool, args, now):
    if bool(args.ids) == bool(args.stale):
        raise UsageError("release: give message ids or --stale (one of the two)")
    if args.stale and args.force:
        raise UsageError("release: --force applies to the ids given, not to --stale")
    timeout = args.settings.claim_timeout
    if args.stale:
        names = admin.release_stale(spool, timeout, now)
        for name in names:
            log.info("released stale claim %s", name)
            print(f"{clean(name)}: released from cur/ to new/ (stale claim)")
        print(f"released {len(names)} stale claim{'s' if len(names) != 1 else ''}")
        return EX_OK
    targets, code = _lookup_all(spool, args.ids)
    code = EX_OK if code else EX_FAILED
    for msg in targets:
        try:
            outcome = admin.release(spool, msg, timeout, args.force, now)
        except (admin.Refused, admin.Vanished) as exc:
            print(f"{PROG}: cannot release {msg.state}/{clean(msg.name)}: {clean(exc)}",
                  file=sys.stderr)
            code = EX_FAILED
            continue
        log.info("release %s (%s): %s", msg.name, msg.message_id, outcome)
        print(f"{clean(msg.name)}: {outcome}")
    return code


def cmd_purge(spool, args, now):
    why = admin.purge_reason(args.state, args.older_than, args.all)
    if why:
        raise UsageError(f"purge: {why}")
    doomed = admin.purge_candidates(spool, args.state, args.older_than, now)
    code, done = EX_OK, 0
    verb = "would remove" if args.dry_run else "removed"
    for msg in doomed:
        if not args.dry_run:
            try:
                admin.purge(spool, msg)
            except (admin.Refused, admin.Vanished) as exc:
                print(f"{PROG}: cannot purge {msg.state}/{clean(msg.name)}: {clean(exc)}",
                      file=sys.stderr)
                code = EX_FAILED
                continue
            log.info("purged %s/%s (%s)", msg.state, msg.name, msg.message_id)
        done += 1
        print(f"{verb} {msg.state}/{clean(msg.name)}  {queue_text.age(now - msg.settled_at)} old  "
              f"{clean(msg.message_id)}")
    limit = "" if args.older_than is None else f" older than {queue_text.age(args.older_than)}"
    print(f"{verb} {done} message{'s' if done != 1 else ''} from {args.state}/{limit}")
    return code


COMMANDS = {"status": cmd_status, "list": cmd_list, "show": cmd_show,
            "retry": cmd_retry, "release": cmd_release, "purge": cmd_purge}


# -- running ---------------------------------------------------------------------------

class UsageError(Exception):
    """A command line that parses but asks for something the command refuses (exit 2)."""


def _settings(path, app_name):
    """``mail.*`` of the ini (read_app_settings never quotes ini text in errors)."""
    raw = read_app_settings(path, app_name)
    prefix = settings_prefix(raw)  # pyramid_mailer.prefix moves the app's keys: ours too
    if not str(raw.get(prefix + "queue_path") or "").strip():
        raise ConfigError(f"{path} [app:{app_name}]: {prefix}queue_path is not set; "
                          f"{PROG} needs the spool directory to look into")
    return mail_settings(raw, path, app_name)


def run(args):
    app_name = getattr(args, "app_name", None)
    verbose = getattr(args, "verbose", False)
    path, app_name = split_uri(args.config_uri, app_name)
    settings = _settings(path, app_name)
    setup_logging(path, verbose=verbose, quiet=not verbose)
    spool = open_spool(settings)
    args.settings = settings
    return COMMANDS[args.command](spool, args, time.time())


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        return run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {clean(exc)}", file=sys.stderr)
        return EX_USAGE
    except (admin.NotFound, admin.Ambiguous) as exc:  # show
        _report_lookup_error(exc)
        return EX_FAILED
    except (ConfigError, ConfigurationError) as exc:
        print(f"{PROG}: error: {clean(' '.join(str(exc).split()))}", file=sys.stderr)
        return EX_CONFIG
    except Exception as exc:
        if getattr(args, "verbose", False):
            log.exception("%s: unexpected error", PROG)
        # an OSError names the file; other messages might quote anything
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else type(exc).__name__
        print(f"{PROG}: unexpected error: {clean(what)} (run with -v for the traceback)",
              file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
