"""What a crashed process leaves in the spool, and what becomes of it.

A committing transaction writes each message into ``tmp/`` and fsyncs it,
renames it into ``prepared/`` when the data manager votes, and into ``new/``
when the transaction finishes.  We vote before any database commits (see
:mod:`pyramid_txmail.mailer.datamanager`), so a process killed at any point leaves:

- a file in ``tmp/``: its transaction never got past our vote, so it never
  committed.  Once older than ``mail.commit_grace`` it is deleted.
- a file in ``prepared/``: the process died between our vote and our
  finish, and that window holds the database's commit -- the transaction
  may or may not have committed.  The file is *in doubt*.  Once older than
  ``mail.commit_grace``:

  - with ``mail.commit_check`` set, the application is asked
    (``check(message_id, registry)``): ``True`` (committed) queues the
    message, ``False`` (not committed) deletes it, ``None`` (cannot tell)
    dead-letters it;
  - without one, it is dead-lettered into ``failed/`` with the reason, for a
    person to ``txmail-queue retry`` or purge: never sent for a transaction
    that did not commit, never silently dropped.

The grace period only has to outlast the longest commit of a live process;
the processor runs :func:`recover` at the start of each pass.
"""
from __future__ import annotations

import os
import time

from .deadletters import bury
from .leftovers import report_once
from ...util.printable import get_logger
from .queue_state import dead_letter
from ...util.regular_files import NotRegularFile, check_regular, open_regular_file
from ...relay.result import PERMANENT, RecipientResult
from .spool import Entry, PoisonMessage, unlink_if_present
from .spoolscan import scan

log = get_logger("pyramid_txmail.recovery")

def recover(spool, grace, check=None, registry=None, now=None):
    """Resolve the leftovers older than ``grace`` seconds; returns how many."""
    now = time.time() if now is None else now
    return _clean_tmp(spool, grace, now) + _resolve_prepared(spool, grace, check, registry, now)


def _old(path, grace, now):
    """Older than ``grace``, or dated more than ``grace`` ahead (a clock set back
    since it was written: it would otherwise never come of age)."""
    try:
        age = now - os.lstat(path).st_mtime
    except OSError:  # gone, or not ours to look at (left, like anything we cannot remove)
        return False
    return age >= grace or -age > grace


def _dotfiles(names):
    return tuple(n for n in names if n.startswith("."))


def _clean_tmp(spool, grace, now):
    """Unfinished writes: entries in tmp/, and state files half-written (dotfiles) in meta/.

    meta/ holds a state file per deferred message and dead letter, so it is
    listed again only when it changed (:mod:`pyramid_txmail.util.dirlisting`).
    Whatever an entry is (a directory, a FIFO), it is removed when that is
    safe and left and said once when not (:mod:`pyramid_txmail.queue.maildir.leftovers`);
    no entry stops the pass.
    """
    removed = 0
    for directory in ("tmp", "meta"):
        path = os.path.join(spool.path, directory)
        try:
            names = (os.listdir(path) if directory == "tmp"
                     else spool.listing("meta", _dotfiles).get())
        except OSError as exc:
            report_once(path, f"cannot be listed ({exc.strerror}); its leftovers stay")
            continue
        for name in names:
            if directory == "tmp" and name.startswith("."):
                continue
            if not _old(os.path.join(path, name), grace, now):
                continue
            if not unlink_if_present(os.path.join(path, name)):
                continue
            removed += 1
            log.warning("removed %s/%s: an unfinished write left by a process that died "
                        "(its transaction never committed)", directory, name)
    return removed


def _resolve_prepared(spool, grace, check, registry, now):
    resolved = 0
    for name in spool.names("prepared"):
        entry = Entry(spool, "prepared", name)
        if not _old(entry.path, grace, now):
            continue
        try:
            check_regular(entry.path, os.lstat(entry.path))
        except NotRegularFile as exc:  # nothing to ask about: dead-letter it as it is
            _dead_letter_poison(spool, entry, exc.strerror, now)
            resolved += 1
            continue
        except FileNotFoundError:
            continue
        message_id = _message_id(entry.path)
        verdict = _ask(check, message_id, registry, name)
        try:
            if verdict is True:
                spool.commit_prepared([name])
                log.warning("in doubt %s (%s): mail.commit_check says its transaction "
                            "committed; queued", name, message_id)
            elif verdict is False:
                spool.discard_prepared(name)
                log.warning("in doubt %s (%s): mail.commit_check says its transaction did "
                            "not commit; deleted", name, message_id)
            else:
                _dead_letter(spool, entry, message_id, now, check is not None)
        except FileNotFoundError:  # another processor resolved it first
            continue
        resolved += 1
    return resolved


def _ask(check, message_id, registry, name):
    if check is None or message_id is None:
        return None
    try:
        verdict = check(message_id, registry)
    except Exception:
        log.exception("mail.commit_check raised for %s (%s); dead-lettering it", name,
                      message_id)
        return None
    return verdict if verdict in (True, False) else None


def _message_id(path):
    """The Message-ID of a queue file, found in its header block however long its
    envelope (a record of thousands of recipients comes first) or the header block
    (neither is held in memory: :func:`~pyramid_txmail.queue.maildir.spoolscan.scan`)."""
    try:
        with open_regular_file(path) as f:
            return scan(f).message_id
    except (OSError, PoisonMessage):  # gone, unreadable, not a regular file
        return None


def _dead_letter(spool, entry, message_id, now, asked):
    try:
        with entry.open() as f:
            toaddrs = scan(f).toaddrs  # the message itself is not read
    except (OSError, PoisonMessage):
        toaddrs = ()
    why = ("mail.commit_check could not tell" if asked else "no mail.commit_check is set")
    reason = ("in doubt: the process that sent it died during the commit, between the "
              "mail spool's vote and its finish, so whether its transaction committed is "
              f"unknown ({why}). If it did, `txmail-queue retry` sends it; if not, purge it.")
    dead = [RecipientResult(r, PERMANENT, None, "in doubt") for r in toaddrs]
    meta = dead_letter({"queued_at": os.lstat(entry.path).st_mtime}, message_id, dead,
                       reason, now, None)
    meta["in_doubt"] = True
    bury(spool, entry, meta)
    log.error("in doubt %s (%s) dead-lettered: %s", entry.name, message_id, reason)


def _dead_letter_poison(spool, entry, why, now):
    """A prepared/ entry that is no message file (a FIFO, a symlink): failed/, with why."""
    reason = f"poison: {why}"
    try:
        bury(spool, entry, dead_letter({}, None, [], reason, now, entry.name))
    except FileNotFoundError:  # another processor resolved it first
        return
    log.error("dead letter failed/%s (left in prepared/): %s", entry.name, reason)
