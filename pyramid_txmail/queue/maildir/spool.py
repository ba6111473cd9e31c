"""The durable on-disk queue: a Maildir whose states are directories.

::

    tmp/        being written (by a committing transaction or the processor)
    prepared/   written and fsynced at the transaction's vote, waiting for its
                finish (a file left here by a crash is "in doubt": see
                :mod:`pyramid_txmail.queue.maildir.recovery`)
    new/        queued, ready to send
    cur/        claimed by a processor (the claim is the atomic rename)
    deferred/   waiting for a retry after a temporary failure, as ``DUE~NAME``
                (the due time in the name: :mod:`pyramid_txmail.queue.maildir.schedule`)
    failed/     dead letters: permanent failure, poison file or too old
    meta/       NAME.json: attempts, next attempt, delivered recipients, reason

Each message is one file, named like a Maildir file (``time.MusecPpidQn.host``),
holding the message bytes after the envelope: our envelope record on the first
line, then repoze.sendmail's ``X-Actually-From:`` / ``X-Actually-To:`` header
lines, so that repoze.sendmail's ``qp`` delivers what we queued and we deliver
what it queued (see :mod:`pyramid_txmail.queue.maildir.spoolfile`).

Writes are durable: ``O_EXCL`` create in ``tmp/``, write, ``fsync``, rename into
``prepared/`` (the vote), rename into ``new/`` and ``fsync`` the directory (the
finish).  Concurrent transactions of one process share that directory fsync
(a group commit: :mod:`pyramid_txmail.queue.maildir.groupcommit` says why no
commit returns before its rename is durable); so do the processor's workers
moving files into one state directory.  Files are 0600 and directories 0700
whatever the umask.  Readers skip dotfiles (repoze.sendmail's ``.sending-`` links).
"""
from __future__ import annotations

import dataclasses
import errno
import io
import itertools
import json
import os
import random
import re
import socket
import time

from . import claims, leftovers, namelimits
from .groupcommit import flush_dir
from .namelimits import meta_file, meta_temp
from ...compose import wire
from ...util.private_dirs import (  # noqa: F401 (fsync_dir is public here too)
    fsync_dir, make_private_dirs, why_unusable)
from ...util.regular_files import NotRegularFile, open_regular_file
from .queue_state import epoch
from .schedule import DeferredIndex
from .spoolfile import (  # noqa: F401 (split_envelope is public here too)
    PoisonMessage, envelope_lines, read_envelope, split_envelope)
from .spoolscan import scan

#: Names taken from a directory at a time (see :meth:`Spool.iter_names`).
BATCH = 10000

STATES = ("tmp", "prepared", "new", "cur", "deferred", "failed", "meta", "done")
FILE_MODE = 0o600
DIR_MODE = 0o700

_counter = itertools.count()
_HOST = re.sub(r"[/:\s]", "_", socket.gethostname()) or "localhost"


class SpoolError(OSError):
    """The spool directory cannot be used (names the path and the reason)."""


class StateFileBlocked(OSError):
    """``meta/NAME.json`` is taken by something no rename can replace (a directory).

    Whatever put it there, the message's state cannot be recorded under its
    name: the processor dead-letters it under a new name instead of looping
    (:meth:`Spool.bury`).
    """

    def __init__(self, path):
        super().__init__(errno.EISDIR, "the state file's place is taken by a directory "
                         "(or something else no file can replace)", path)


def unlink_if_present(path):
    """Delete a spool entry; one already gone (another process took it) is fine.

    Whatever it is: an entry that cannot be deleted (a directory with files
    in it) is left and said once, never raised (:mod:`pyramid_txmail.queue.maildir.leftovers`).
    Returns whether this call deleted it.
    """
    return leftovers.remove(path)


def unique_name():
    now = time.time()
    return (f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}"
            f"Q{next(_counter)}R{random.getrandbits(32):08x}.{_HOST}")


def _write_all(fd, data):
    """``os.write`` until all of ``data`` is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclasses.dataclass
class Entry:
    """One message file in the spool, in one state.

    An entry this process claimed holds its :class:`~pyramid_txmail.queue.maildir.claims.Claim`
    (the open, locked file), or the ``problem`` of a file that is not a
    regular one (dead-lettered with it as the reason).
    """

    spool: Spool
    state: str
    name: str
    claim: object = dataclasses.field(default=None, repr=False, compare=False)
    problem: str | None = None

    @property
    def path(self):
        """In ``deferred/``, ``name`` may be the message name: its file is found."""
        name = self.spool.deferred_file(self.name) if self.state == "deferred" else self.name
        return os.path.join(self.spool.path, self.state, name)

    def open(self):
        """The file, read through the claim's fd if claimed (never via a symlink)."""
        return self.claim.reader() if self.claim else open_regular_file(self.path)

    def release(self):
        """Close a claim's fd (its lock goes with it): the file has left ``cur/``."""
        if self.claim is not None:
            self.claim.close()


class Spool(DeferredIndex):
    """A spool directory.  Creates the Maildir layout when missing.

    In ``deferred/`` a file's name carries its due time
    (:mod:`pyramid_txmail.queue.maildir.schedule`); :meth:`names` gives message names.

    Refuses, with a :class:`SpoolError` naming the directory: a spool on a
    read-only file system, one this user cannot write, and one owned by
    another user.  The last matters for root, whom permission bits do not
    stop: files written as root into the application user's spool would be
    unreadable to that user's processor (they are 0600), so every process
    on one spool must run as its owner.
    """

    def __init__(self, path, create=True):
        self.path = os.path.abspath(path)
        #: Each state's directory, joined once (a commit asked for six).
        self._dirs = {state: os.path.join(self.path, state) for state in STATES}
        for state in ("",) + STATES:
            directory = os.path.join(self.path, state) if state else self.path
            if not os.path.isdir(directory):
                if not create:
                    raise SpoolError(f"{directory}: not a spool directory")
                try:
                    make_private_dirs(directory)
                except OSError as exc:
                    raise SpoolError(f"{directory}: cannot create the spool "
                                     f"directory: {exc.strerror}") from None
            why = why_unusable(directory)
            if why:
                raise SpoolError(f"{directory}: the spool directory {why}")
        #: The longest file name the spool's directories take, in bytes.
        self.name_max = namelimits.name_max(self._dirs.values())

    def name_problem(self, name):
        """Why message ``name`` cannot go through this spool (a name too long
        for a name derived from it: :mod:`~pyramid_txmail.queue.maildir.namelimits`),
        or ``None``."""
        return namelimits.too_long(name, self.name_max)

    def _dir(self, state):
        return self._dirs.get(state) or os.path.join(self.path, state)

    # -- writing (the transaction data manager) ------------------------------

    def write_tmp(self, fromaddr, toaddrs, message_bytes):
        """Write and fsync one message into ``tmp/``; returns its name.

        ``message_bytes`` is ``bytes`` or a :class:`~pyramid_txmail.compose.wire.Stream`.
        """
        tmp = self._dirs["tmp"]
        while True:
            name = unique_name()
            try:
                fd = os.open(f"{tmp}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                continue
            break
        try:
            os.fchmod(fd, FILE_MODE)
            head = envelope_lines(fromaddr, toaddrs)
            if isinstance(message_bytes, (bytes, bytearray, memoryview)):
                # one write: a buffered file object cost an fstat, an ioctl and
                # an lseek per message, and more time than the write itself
                _write_all(fd, head + message_bytes)
            else:  # a wire.Stream: written chunk by chunk, never whole in memory
                with os.fdopen(fd, "wb", closefd=False) as stream:
                    stream.write(head)
                    for chunk in message_bytes:
                        stream.write(chunk)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.discard_tmp(name)
            raise
        os.close(fd)
        return name

    def commit_tmp(self, names):
        """Move written messages from ``tmp/`` to ``new/`` and fsync ``new/``."""
        self._publish("tmp", names)

    def discard_tmp(self, name):
        self._discard("tmp", name)

    # -- the transaction's two phases (the data manager) ----------------------

    def prepare(self, fromaddr, toaddrs, message_bytes, names=None):
        """The vote: write and fsync into ``tmp/``, then rename into ``prepared/``.

        ``tmp/`` then only ever holds writes that never finished, which no
        transaction can have committed (we vote before any database
        commits), while ``prepared/`` holds messages whose transaction was
        deciding.  The vote ends with :meth:`settle_prepared`, which makes
        these renames durable before any other resource commits.

        ``names``: a list the name is added to as soon as the file is in
        ``prepared/`` -- the caller's record of what to discard, which an
        interrupt between this return and the caller's own bookkeeping cannot
        miss.  An interrupt in here removes the file from wherever it is.
        """
        name = self.write_tmp(fromaddr, toaddrs, message_bytes)
        try:
            os.rename(f"{self._dirs['tmp']}/{name}", f"{self._dirs['prepared']}/{name}")
            if names is not None:
                names.append(name)
        except BaseException:
            self.discard_tmp(name)
            self.discard_prepared(name)
            if names is not None and name in names:
                names.remove(name)
            raise
        return name

    def settle_prepared(self):
        """The end of the vote: fsync ``prepared/`` (shared with concurrent votes).

        Without it a power loss after the database's commit -- a database on
        another host or file system, whose commit flushes nothing here -- and
        before the finish's fsync of ``new/`` could bring a committed message
        back in ``tmp/``, where it reads as a vote that never finished and is
        deleted after ``mail.commit_grace``.  With it, such a message is in
        ``prepared/``: in doubt, resolved by ``mail.commit_check`` or dead-lettered,
        never deleted unasked.
        """
        flush_dir(self._dirs["prepared"])

    def commit_prepared(self, names):
        """The finish: move prepared messages into ``new/`` and fsync ``new/``.

        The fsync is shared with the finishes of other threads (group commit):
        it returns once an fsync of ``new/`` that began after these renames
        has ended.
        """
        self._publish("prepared", names)

    def discard_prepared(self, name):
        """The abort: a prepared message goes (it was never committed)."""
        self._discard("prepared", name)

    def _discard(self, state, name):
        unlink_if_present(os.path.join(self._dir(state), name))

    def _publish(self, state, names):
        source, new = self._dirs[state], self._dirs["new"]
        for name in names:
            os.rename(f"{source}/{name}", f"{new}/{name}")
        if names:
            flush_dir(new)

    # -- reading (the processor) ------------------------------------------------

    def names(self, state):
        """The message names in a state, oldest first (dotfiles skipped)."""
        if state == "deferred":
            return sorted((s.name for s in self.scheduled()), key=_age_key)
        try:
            names = [n for n in os.listdir(self._dir(state)) if not n.startswith(".")]
        except FileNotFoundError:
            return []
        return sorted(names, key=_age_key)

    def iter_names(self, state, batch=None, newest_first=False):
        """The message names in a state, in sorted batches of at most ``batch``.

        Memory stays bounded however long the queue: the directory is read
        as a stream and each batch is sorted oldest first (``newest_first``:
        newest first).  A queue shorter than ``batch`` (the usual case) comes
        out strictly in that order; a longer backlog is taken batch by batch,
        in directory order.
        """
        batch = batch or BATCH
        if state == "deferred":  # message names, as names() gives them
            names = self.names(state)
            yield from reversed(names) if newest_first else names
            return
        try:
            entries = os.scandir(self._dir(state))
        except FileNotFoundError:
            return
        with entries:
            names = []
            for entry in entries:
                name = entry.name
                if name.startswith("."):  # a queue file may be called *.json too
                    continue
                names.append(name)
                if len(names) >= batch:
                    names.sort(key=_age_key, reverse=newest_first)
                    yield from names
                    names = []
            names.sort(key=_age_key, reverse=newest_first)
            yield from names

    def count(self, state):
        return len(self.names(state))

    def read_meta(self, name):
        """The state file as a dict: ``{}`` if none, ``corrupt_meta`` (and
        ``meta_problem``) if it cannot be trusted.

        A name too long to have a state file (ENAMETOOLONG) has none.
        """
        try:
            with open_regular_file(os.path.join(self._dir("meta"), meta_file(name))) as f:
                meta = json.load(f)
            if not isinstance(meta, dict):  # [], 42, null: every reader expects keys
                return {"corrupt_meta": True, "meta_problem": "not a JSON object"}
            return meta
        except FileNotFoundError:
            return {}
        except NotRegularFile as exc:
            return {"corrupt_meta": True, "meta_problem": exc.strerror}
        except ValueError:
            return {"corrupt_meta": True}
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return {}
            raise

    def write_meta(self, name, meta):
        """Replace a message's state file atomically (write, fsync, rename).

        A write the disk cuts short (full, or a file-size limit) raises and
        leaves the old state file as it was: ``os.write`` may write only part
        of the data without an error, so it is repeated until all of it is
        written, and the temporary file is removed when anything fails.
        """
        final = os.path.join(self._dir("meta"), meta_file(name))
        tmp = os.path.join(self._dir("meta"), meta_temp(name, os.getpid()))
        data = memoryview(json.dumps(meta, indent=1, sort_keys=True).encode())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            _unlink_quietly(tmp)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise StateFileBlocked(final) from None
            raise
        flush_dir(self._dir("meta"))

    def drop_meta(self, name):
        unlink_if_present(os.path.join(self._dir("meta"), meta_file(name)))

    def claim(self, state, name):
        """Atomically take a message for sending; ``None`` if another took it.

        The entry holds the claim (see :mod:`pyramid_txmail.queue.maildir.claims`): call
        its ``release()`` once the file has left ``cur/``.  Its ``problem`` says why
        it is poison before it is read: not a regular file, or a name too long
        for the names the spool would derive from it (:meth:`name_problem`).
        """
        source, name = self.locate(state, name)  # deferred/DUE~NAME → cur/NAME
        taken = claims.take(source, os.path.join(self._dir("cur"), name))
        if taken is None:
            return None
        claim, problem = taken
        return Entry(self, "cur", name, claim=claim, problem=problem or self.name_problem(name))

    def read(self, entry, stream_over=None):
        """``(fromaddr, toaddrs, message)`` of an entry (PoisonMessage if bad).

        The file is read once through :func:`~pyramid_txmail.queue.maildir.spoolscan.scan`,
        which holds neither the header block nor the body.  The message is
        ``bytes`` when it is no larger than ``stream_over`` octets (or that
        is None), or when a body line is over SMTP's 998 octets (the whole
        message is then re-encoded, :func:`wire.to_wire`); else a
        :class:`wire.Stream` that sends the file's ranges block by block,
        so that memory does not grow with the file -- however large its
        header block or its envelope.  A header field too large to refold
        is a PoisonMessage.
        """
        try:
            with entry.open() as f:
                whole = stream_over is None or os.fstat(f.fileno()).st_size <= stream_over
                if whole:
                    # Read once and scanned in memory: through the claim's reader the
                    # scan cost a Python call per line and per seek (an fstat for each
                    # seek to the end), and the file was read twice.
                    f = io.BytesIO(f.read())
                layout = scan(f, body=not whole)
                if whole or layout.long_body_line:
                    return layout.fromaddr, layout.toaddrs, b"".join(layout.chunks(f))
        except OSError as exc:
            raise PoisonMessage(f"unreadable queue file: {exc.strerror}") from None

        def chunks():
            with entry.open() as f:  # the claim's own fd: the locked inode, no symlink
                yield from layout.chunks(f)

        return layout.fromaddr, layout.toaddrs, wire.Stream(
            chunks, size=layout.size, eightbit=layout.eightbit,
            message_id=layout.message_id, head_8bit=layout.head_8bit)

    def move(self, entry, state, new_name=None):
        """Move an entry to another state and fsync the target directory.

        Out of ``deferred/`` the file gets its message name back (into it:
        :meth:`defer`), or ``new_name``.
        """
        if entry.claim is not None:
            entry.claim.settle()
        source, name = self.locate(entry.state, entry.name)
        name = new_name or name
        os.rename(source, os.path.join(self._dir(state), name))
        flush_dir(self._dir(state))
        return Entry(self, state, name)

    def dead_letter_copy(self, fromaddr, toaddrs, message_bytes, meta):
        """Write a new message straight into ``failed/``, its state file first.

        Used when only some recipients of a message failed: the copy's
        envelope is exactly those, so retrying it cannot reach the others.
        Durable like a commit: written and fsynced in ``tmp/``, its meta
        written, then renamed into ``failed/`` and the directory fsynced.
        """
        name = self.write_tmp(fromaddr, toaddrs, message_bytes)
        try:
            self.write_meta(name, meta)
            os.rename(os.path.join(self._dir("tmp"), name),
                      os.path.join(self._dir("failed"), name))
        except BaseException:
            self.discard_tmp(name)
            self.drop_meta(name)
            raise
        flush_dir(self._dir("failed"))
        return Entry(self, "failed", name)

    def remove(self, entry):
        """A delivered message leaves the spool, with its state file."""
        unlink_if_present(entry.path)
        self.drop_meta(entry.name)

    def retire(self, entry, has_meta=True):
        """A delivered message leaves the queue now: renamed into ``done/``.

        Deleting a file is slow on a journalling file system (the journal
        must free its blocks; milliseconds each on ext4), renaming is not.
        So the processor retires a message with a rename -- from then on
        no crash can send it again -- and deletes ``done/`` files in the
        background (:meth:`reap_path`, :meth:`reap`).
        """
        done = os.path.join(self._dir("done"), entry.name)
        if entry.claim is not None:
            entry.claim.settle()
        os.rename(entry.path, done)
        if has_meta:
            self.drop_meta(entry.name)
        return done

    reap_path = staticmethod(unlink_if_present)

    def reap(self):
        """Delete what is left in ``done/`` (delivered; e.g. after a crash).

        An entry that is not ours to delete (a directory with files in it)
        is left there and said once (:mod:`pyramid_txmail.queue.maildir.leftovers`).
        """
        names = self.names("done")
        for name in names:
            self.reap_path(os.path.join(self._dir("done"), name))
        return len(names)

    def recover_stale(self, timeout, now=None):
        """Stale claims (see :func:`~pyramid_txmail.queue.maildir.claims.is_stale`) go back
        to ``new/``.

        Their owner died mid-send: at-least-once, like Postfix after a
        restart (recipients recorded as delivered are not sent again).  A
        claim whose owner is alive (it holds the claim's lock) stays.
        """
        now = time.time() if now is None else now
        recovered = claims.sweep(self._dir("cur"), self._dir("new"), self.names("cur"),
                                 timeout, now)
        if recovered:
            flush_dir(self._dir("new"))
        return recovered

    def next_claim_expiry(self, timeout, now):
        """When the first claim in ``cur/`` may turn stale (None if there is none)."""
        return claims.next_expiry(self._dir("cur"), self.names("cur"), timeout, now)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def enqueued_at(name):
    """The enqueue time (epoch seconds) encoded in a queue file name, or ``None``.

    A name is anyone's to make: ``-5.M1P1.host`` parses, but as no time a
    message could have been queued at (it would expire at once), so it is
    ``None`` like a name with no number, and the caller falls back.
    """
    return epoch(_age_key(name)[0])


def _age_key(name):
    head = name.split(".", 2)
    try:
        return (float(head[0] + "." + head[1].lstrip("M").split("P")[0]), name)
    except (ValueError, IndexError):
        return (float("inf"), name)
