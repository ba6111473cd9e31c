"""``txmail-queue``'s command line: its commands, options and help texts.

Kept apart from :mod:`pyramid_txmail.scripts.queue` (which runs the commands)
because the help is most of it: what each command does, on a spool or an SQL
outbox, with examples and exit statuses.
"""
from __future__ import annotations

import argparse

from ..queue.states import state_of
from ..settings import parse_duration
from ..util.printable import printable

PROG = "txmail-queue"

DESCRIPTION = """\
Look into a pyramid_txmail queue -- the spool (mail.queue_path), or the SQL
outbox (mail.queue_url) -- and act on it: counts and ages, one line per
message, one message in full, retry dead letters, remove old ones; init-db
creates the SQL outbox's tables.  Only the mail.* settings of the ini's
[app:NAME] section are read (the application is not loaded).  Safe while
txmail-qp runs.

states: queued (new/), in_progress (cur/, being sent), deferred (waiting for
a retry), failed (dead letters, with the reason), tmp (being written, spool
only).
"""

EPILOG = """\
examples:
  txmail-queue production.ini status
  txmail-queue production.ini status --json
  txmail-queue production.ini list --state failed
  txmail-queue production.ini list --to bob@example.org --reason 'no such user'
  txmail-queue production.ini watch --interval 5
  txmail-queue production.ini show 1732523000.M1234
  txmail-queue production.ini show '<welcome-42@example.com>'
  txmail-queue production.ini retry --all-failed
  txmail-queue production.ini release --stale
  txmail-queue production.ini purge --state failed --older-than 7d --dry-run
  txmail-queue production.ini init-db

Each command has its own --help, e.g. txmail-queue production.ini list --help

exit status:
  0   done
  1   the operation failed: no such message, an ambiguous id, a message in a
      state the command does not apply to, a file taken by a processor
      meanwhile, the database of mail.queue_url cannot be reached
  2   usage error (bad command line, unknown state, bad duration)
  78  configuration error: missing ini file or section, bad or unknown mail.*
      setting, no mail.queue_path (nor mail.queue_url), no spool directory
      there, an SQL outbox without its tables; init-db without mail.queue_url
"""

STATE_HELP = ("queued (or new), in_progress (or cur), deferred, failed, tmp")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose error line escapes what it quotes: ``unrecognized
    arguments`` and ``invalid choice`` repeat the command line, which may hold a pasted
    ESC sequence (:func:`pyramid_txmail.util.printable.printable`).  Shared by
    ``txmail-qp``; its subcommands' parsers are of this class too."""

    def error(self, message):
        super().error(printable(message))


def _duration(text):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def _positive(text):
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def _state(text):
    try:
        return state_of(text.strip().lower())
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
    parser = ArgumentParser(
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
             ["list", "list --state failed", "list --state deferred --state failed --json",
              "list --state failed --to bob@example.org --reason 'no such user'",
              "list --older-than 2h --newer-than 1d --limit 100 --offset 100",
              "list --message-id '<welcome-42@example.com>'", "list --page 3"])
    p.add_argument("--state", action="append", type=_state, metavar="STATE",
                   help=f"only this state (repeatable): {STATE_HELP}; "
                        "default: all but tmp")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--to", metavar="ADDRESS",
                   help="only messages to this recipient (its domain in any case)")
    p.add_argument("--message-id", metavar="ID", help="only this Message-ID (<> optional)")
    p.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="only messages queued at least this long ago: 30m, 12h, 7d")
    p.add_argument("--newer-than", type=_duration, metavar="DURATION",
                   help="only messages queued less than this long ago")
    p.add_argument("--reason", metavar="TEXT",
                   help="only messages whose last error contains TEXT (any case)")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="at most N messages (default: 50 on a terminal, all in a pipe)")
    p.add_argument("--offset", type=_count, metavar="N", default=0,
                   help="skip the first N matching messages")
    p.add_argument("--page", type=_positive, metavar="N",
                   help="page N (from 1) of --limit messages (default 50)")

    p = _sub(commands, "watch", "the status again and again, until Ctrl-C",
             "Print the status (as `status` does) every --interval seconds until\n"
             "Ctrl-C, which ends it with exit status 0.  On a terminal the screen is\n"
             "redrawn; in a pipe each status follows the last.",
             ["watch", "watch --interval 10"])
    p.add_argument("--interval", type=_duration, default=2.0, metavar="SECONDS",
                   help="seconds between two looks (default 2; 500ms, 1m)")
    p.add_argument("--count", type=_positive, metavar="N",
                   help="stop after N looks (default: until Ctrl-C)")

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

    _sub(commands, "metrics", "the queue gauges once, in Prometheus text format",
         "Print the queue's gauges (messages per state, oldest age per state,\n"
         "deferred mail due) once in the Prometheus text format, e.g. for the\n"
         "node_exporter textfile collector.  Only the queue gauges: the delivery\n"
         "counters (sent, deferred, failed, attempts, latency, sessions) are\n"
         "counted by txmail-qp (mail.metrics_port, mail.metrics_file).  Needs\n"
         "pyramid_txmail[ops].",
         ["metrics"])

    _sub(commands, "init-db", "create the SQL outbox's tables (mail.queue_url)",
         "Create the SQL outbox's tables and indexes in the database that\n"
         "mail.queue_url names, for an application without Alembic (one with\n"
         "Alembic adds pyramid_txmail's migrations or metadata to its own instead:\n"
         "see docs/queues.rst).  Tables that exist already are left as they are, so it\n"
         "is safe to run again.  An error without mail.queue_url (a spool needs no\n"
         "set-up: the application creates it when it starts).",
         ["init-db", "init-db --app-name worker"])
    return parser
