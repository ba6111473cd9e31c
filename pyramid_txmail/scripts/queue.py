"""``txmail-queue``: look into the mail queue and act on it, for an operator.

``status``, ``list`` and ``show`` only read; ``retry`` puts dead letters (or
deferred mail) back into the queue; ``release`` puts back a claim whose
processor died; ``purge`` deletes old dead letters; ``init-db`` creates the
SQL outbox's tables.  All of it is safe while ``txmail-qp`` runs, on a spool
or an SQL outbox alike: the queue's
:class:`~pyramid_txmail.queue.interface.IQueueAdmin` does the work
(:func:`pyramid_txmail.queue.open_queue`); this module parses arguments and
prints.

It reads only the ``mail.*`` settings of the ini's ``[app:NAME]`` section --
the application is not loaded -- and never prints a setting, so the SMTP
password cannot reach the terminal.  Message text is printed with control
characters escaped, so that a hostile Subject cannot drive the terminal.
"""
from __future__ import annotations

import json
import math
import sys
import time

from pyramid.exceptions import ConfigurationError

from ..util.logformat import apply_log_format
from ..util.printable import get_logger
from ..util.shown_url import scrub, shown_url
from ..queue.interface import Ambiguous, NotFound, Refused, Vanished
from ..queue.states import LABELS, QUEUE_STATES, purge_reason
from ..settings import settings_prefix
from . import queue_ops, queue_text
from .queue_args import PROG, build_parser  # noqa: F401 (public here too)
from .queue_text import clean
from .streams import guard_streams, quiet_broken_pipe
from .qp import (EX_CONFIG, EX_OK, EX_SOFTWARE, EX_USAGE, ConfigError, mail_settings,
                 open_queue_or_exit, read_app_settings, setup_logging, split_uri)

EX_FAILED = EX_SOFTWARE  # the operation failed for a message, or it was not found
EX_INTERRUPTED = 130  # Ctrl-C, as a shell reports it

log = get_logger("pyramid_txmail.scripts.queue")

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

def cmd_status(queue, args, now):
    info = queue.status(now)
    if args.json:
        _json(info)
    elif queue_ops.is_tty(sys.stdout):
        _print(queue_ops.status_table(info, bold=queue_ops.colour(sys.stdout)))
    else:
        _print(queue_text.status_lines(info))
    return EX_OK


def cmd_watch(queue, args, now):
    """``status`` again every --interval seconds until Ctrl-C (exit 0)."""
    tty = queue_ops.is_tty(sys.stdout)
    bold = queue_ops.colour(sys.stdout)
    render = ((lambda info: queue_ops.status_table(info, bold)) if tty
              else queue_text.status_lines)
    return queue_ops.watch(queue, args.interval, render, args.count)


def cmd_list(queue, args, now):
    states = tuple(dict.fromkeys(args.state)) if args.state else QUEUE_STATES
    tty = queue_ops.is_tty(sys.stdout)
    found, total, offset = queue_ops.select(queue, states, args, now, tty)
    if args.json:
        _json([m.as_dict(now) for m in found])
        return EX_OK
    if found or not total:
        _print(queue_text.list_lines(found, states, now))
    more = queue_ops.more_line(len(found), total, offset)
    if more:
        print(more)
    return EX_OK


def cmd_show(queue, args, now):
    msg = queue.find(args.id)
    body = queue.read_body(msg) if args.body else None
    if not args.json:
        _print(queue_text.show_lines(msg, now, body, args.body))
        return EX_OK
    data = msg.as_dict(now)
    data.update(path=getattr(msg, "path", None), headers=[list(h) for h in msg.headers],
                meta=msg.meta)
    if args.body:
        data["body"] = None if body is None else body.decode("utf-8", "replace")
    _json(data)
    return EX_OK


def _report_lookup_error(exc):
    """No such message, or several (listed, so that the next try can be exact)."""
    print(f"{PROG}: {clean(exc)}", file=sys.stderr)
    for m in getattr(exc, "candidates", ())[:20]:
        print(f"  {clean(m.name)}  {LABELS[m.state]}  {clean(m.message_id)}",
              file=sys.stderr)


def cmd_retry(queue, args, now):
    if bool(args.ids) == bool(args.all_failed):
        raise UsageError("retry: give message ids or --all-failed (one of the two)")
    if args.all_failed:
        total = queue_ops.count(queue, "failed", now)
        if not total:
            print("no dead letters in failed/")
            return EX_OK
        done, vanished, refused = queue_ops.bulk(
            queue, queue_ops.iter_messages(queue, ("failed",)), queue.retry, "retry",
            total, log, PROG)
        print(queue_ops.summary("retried", done, done + vanished + refused, vanished,
                                refused))
        return EX_FAILED if refused else EX_OK
    targets, found = _lookup_all(queue, args.ids)
    code = EX_OK if found else EX_FAILED
    for msg in queue_ops.counted(targets, "retried"):
        try:
            outcome = queue.retry(msg)
        except (Refused, Vanished) as exc:
            print(f"{PROG}: cannot retry {msg.state}/{clean(msg.name)}: {clean(exc)}",
                  file=sys.stderr)
            code = EX_FAILED
            continue
        log.info("retry %s (%s): %s", msg.name, msg.message_id, outcome)
        print(f"{clean(msg.name)}: {outcome}")
    return code


def _lookup_all(queue, ids):
    """The messages ``ids`` name, each lookup error reported; (found, all found?)."""
    found = []
    for ident in ids:
        try:
            found.append(queue.find(ident))
        except (NotFound, Ambiguous) as exc:
            _report_lookup_error(exc)
    return list(dict((m.name, m) for m in found).values()), len(found) == len(ids)


def cmd_release(queue, args, now):
    if bool(args.ids) == bool(args.stale):
        raise UsageError("release: give message ids or --stale (one of the two)")
    if args.stale and args.force:
        raise UsageError("release: --force applies to the ids given, not to --stale")
    timeout = args.settings.claim_timeout
    if args.stale:
        names = queue.release_stale(timeout, now)
        for name in names:
            log.info("released stale claim %s", name)
            print(f"{clean(name)}: released from cur/ to new/ (stale claim)")
        print(f"released {len(names)} stale claim{'s' if len(names) != 1 else ''}")
        return EX_OK
    targets, code = _lookup_all(queue, args.ids)
    code = EX_OK if code else EX_FAILED
    for msg in queue_ops.counted(targets, "released"):
        try:
            outcome = queue.release_claim(msg, timeout, args.force, now)
        except (Refused, Vanished) as exc:
            print(f"{PROG}: cannot release {msg.state}/{clean(msg.name)}: {clean(exc)}",
                  file=sys.stderr)
            code = EX_FAILED
            continue
        log.info("release %s (%s): %s", msg.name, msg.message_id, outcome)
        print(f"{clean(msg.name)}: {outcome}")
    return code


def cmd_purge(queue, args, now):
    why = purge_reason(args.state, args.older_than, args.all)
    if why:
        raise UsageError(f"purge: {why}")
    limit = "" if args.older_than is None else f" older than {queue_text.age(args.older_than)}"
    doomed = _purge_candidates(queue, args.state, args.older_than, now)
    if args.dry_run:  # the point of it is the list
        done = 0
        for msg in doomed:
            done += 1
            print(f"would remove {msg.state}/{clean(msg.name)}  "
                  f"{queue_text.age(now - msg.settled_at)} old  {clean(msg.message_id)}")
        print(f"would remove {done} message{'s' if done != 1 else ''} from "
              f"{args.state}/{limit}")
        return EX_OK
    total = queue_ops.count(queue, args.state, now)
    done, vanished, refused = queue_ops.bulk(queue, doomed, queue.purge, "purge", total,
                                             log, PROG)
    print(f"removed {done} message{'s' if done != 1 else ''} from {args.state}/{limit}; "
          f"{vanished} vanished" + (f"; {refused} refused" if refused else ""))
    return EX_FAILED if refused else EX_OK


def _purge_candidates(queue, state, older_than, now):
    """What ``purge`` removes, one at a time where the backend streams (memory stays
    flat over a large backlog), else the backend's own list."""
    if state in ("new", "cur") or getattr(queue, "iter_messages", None) is None:
        return iter(queue.purge_candidates(state, older_than, now))
    return (m for m in queue_ops.iter_messages(queue, (state,))
            if older_than is None or now - m.settled_at >= older_than)


def cmd_init_db(settings):
    """Create the SQL outbox's tables in ``mail.queue_url`` (SQLAlchemy is imported here
    only: a spool's user never needs it)."""
    from ..queue.sql import init_db
    from ..queue.sql.backend import engine_from_settings

    from ..queue.sql.tables import IncompatibleTables

    engine = engine_from_settings(settings)
    try:
        init_db(engine)
    except IncompatibleTables as exc:
        raise ConfigError(str(exc)) from None
    finally:
        engine.dispose()
    where = shown_url(engine.url)
    log.info("init-db: the outbox tables are in %s", where)
    print(f"the SQL outbox's tables are ready in {clean(where)}")
    return EX_OK


def cmd_metrics(queue, args, now):
    """The queue gauges in Prometheus text format (delivery counters live in txmail-qp)."""
    from ..processor.metrics import queue_exposition

    sys.stdout.write(queue_exposition(queue).decode())
    return EX_OK


COMMANDS = {"status": cmd_status, "watch": cmd_watch, "list": cmd_list, "show": cmd_show,
            "retry": cmd_retry, "release": cmd_release, "purge": cmd_purge,
            "metrics": cmd_metrics}


# -- running ---------------------------------------------------------------------------

class UsageError(Exception):
    """A command line that parses but asks for something the command refuses (exit 2)."""


def _settings(path, app_name, command):
    """``mail.*`` of the ini (read_app_settings never quotes ini text in errors)."""
    raw = read_app_settings(path, app_name)
    prefix = settings_prefix(raw)  # pyramid_mailer.prefix moves the app's keys: ours too
    if command == "init-db":
        if not str(raw.get(prefix + "queue_url") or "").strip():
            raise ConfigError(f"{path} [app:{app_name}]: {prefix}queue_url is not set; "
                              "init-db creates the SQL outbox's tables in the database it "
                              "names (a spool in mail.queue_path needs no set-up)")
        return mail_settings(raw, path, app_name)
    if not any(str(raw.get(prefix + key) or "").strip() for key in ("queue_path",
                                                                    "queue_url")):
        raise ConfigError(f"{path} [app:{app_name}]: {prefix}queue_path is not set; "
                          f"{PROG} needs the spool directory to look into (or "
                          f"{prefix}queue_url, the SQL outbox)")
    return mail_settings(raw, path, app_name, PROG, "to look into")


def run(args):
    app_name = getattr(args, "app_name", None)
    verbose = getattr(args, "verbose", False)
    path, app_name = split_uri(args.config_uri, app_name)
    settings = _settings(path, app_name, args.command)
    args.settings = settings
    setup_logging(path, verbose=verbose, quiet=not verbose)
    apply_log_format(settings.log_format)
    if args.command == "init-db":
        return cmd_init_db(settings)
    queue = open_queue_or_exit(settings)
    return COMMANDS[args.command](queue, args, getattr(queue, "clock", time.time)())


def _database_problem(exc, settings):
    """``(exit status, one line)`` for an SQL outbox whose database cannot be reached
    or has no outbox tables yet (its URL without the password, and the driver's
    reason), or None for any other error."""
    if settings is None or not type(exc).__module__.startswith("sqlalchemy"):
        return None
    from ..queue.sql.engine import unreachable, where

    url = where(settings.queue_url)
    reason = str(getattr(exc, "orig", None) or "").strip().splitlines()
    if reason and "txmail_outbox" in reason[0] and ("does not exist" in reason[0]
                                                    or "no such table" in reason[0]):
        return EX_CONFIG, (f"the database of mail.queue_url ({url}) has no outbox tables "
                           f"({reason[0]}): create them with `{PROG} CONFIG_URI init-db`, "
                           "or with the application's Alembic migrations")
    why = unreachable(exc)
    if why is None:
        return None
    why = scrub(why, settings.queue_url)  # a driver's error may quote its parameters
    return EX_FAILED, f"the database of mail.queue_url ({url}) is not available: {why}"


def main(argv=None):
    guard_streams()  # before argparse, which prints --help and usage errors
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:  # `txmail-queue INI list | head -1`: the reader has enough
        return quiet_broken_pipe()
    except UsageError as exc:
        print(f"{PROG}: error: {clean(exc)}", file=sys.stderr)
        return EX_USAGE
    except queue_ops.Interrupted as exc:  # Ctrl-C in retry/purge/release over many
        print(f"\n{PROG}: interrupted: {clean(exc)}", file=sys.stderr)
        return EX_INTERRUPTED
    except KeyboardInterrupt:  # Ctrl-C outside `watch`: each change is atomic, say so
        print(f"\n{PROG}: interrupted (what was done is done, nothing half-done)",
              file=sys.stderr)
        return EX_INTERRUPTED
    except (NotFound, Ambiguous) as exc:  # show
        _report_lookup_error(exc)
        return EX_FAILED
    except (ConfigError, ConfigurationError) as exc:
        print(f"{PROG}: error: {clean(' '.join(str(exc).split()))}", file=sys.stderr)
        return EX_CONFIG
    except Exception as exc:
        problem = _database_problem(exc, getattr(args, "settings", None))
        if problem:
            log.debug("%s", problem[1], exc_info=True)
            print(f"{PROG}: error: {clean(problem[1])}", file=sys.stderr)
            return problem[0]
        if getattr(args, "verbose", False):
            log.exception("%s: unexpected error", PROG)
        # an OSError names the file; other messages might quote anything
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else type(exc).__name__
        print(f"{PROG}: unexpected error: {clean(what)} (run with -v for the traceback)",
              file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
