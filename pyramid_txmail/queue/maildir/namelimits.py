"""How long a message's name may be: every name the spool derives from it must fit.

A message file ``NAME`` is given other names on its way through the spool::

    new/NAME  cur/NAME  done/NAME  failed/NAME    the name itself
    deferred/DUE~NAME                             21 bytes more (the retry time)
    meta/NAME.json                                its state file: 5 more
    meta/.NAME.PID.tmp                            that file being written: up to 16 more

A file system refuses a name longer than its NAME_MAX (255 bytes on ext4,
XFS, btrfs, tmpfs, NFS).  Our own names are ~60 bytes, but another writer
-- repoze.sendmail, a script, a person -- may put a message in ``new/``
under any name up to NAME_MAX.  The derived names were once made only
after sending, and each refused one (ENAMETOOLONG) left the message in
``cur/``, to be put back after ``mail.claim_timeout`` and sent again, for
ever.  So a message whose name cannot take every derived form is poison:
it is dead-lettered as soon as it is claimed, before anything is sent, and
under a new name of ours (:func:`~pyramid_txmail.queue.maildir.deadletters.bury`),
as its state file could not be written under its own; the reason names the
limit and the old name.  A name in any state that cannot have a state file
reads as having none (:meth:`~pyramid_txmail.queue.maildir.spool.Spool.read_meta`).

Lengths are in bytes of the name as the file system stores it
(:func:`os.fsencode`), as NAME_MAX counts them: a name of 120 "é" is 240 bytes.
"""
from __future__ import annotations

import os

from .queue_state import LATEST
from .schedule import indexed_name

#: NAME_MAX when the file system does not say (POSIX's most common value).
DEFAULT_NAME_MAX = 255
#: The largest process id (pid_t is 32 bits), for the state file's temporary name.
_LARGEST_PID = 2 ** 31 - 1


def meta_file(name):
    """The state file's name of message ``name`` (in ``meta/``)."""
    return name + ".json"


def meta_temp(name, pid):
    """The name the state file of ``name`` is written under by process ``pid``."""
    return f".{name}.{pid}.tmp"


#: ``(state, shape, make)`` of each name the spool gives a message: ``make(name)``
#: is that name at its longest (the latest retry time, the largest pid).
_FORMS = (
    ("new", "NAME", lambda name: name),  # and cur/, done/, failed/
    ("deferred", "DUE~NAME", lambda name: indexed_name(LATEST, name)),
    ("meta", "NAME.json", meta_file),
    ("meta", ".NAME.PID.tmp", lambda name: meta_temp(name, _LARGEST_PID)),
)


def derived_names(name):
    """``(state, file name)`` of every name the spool gives message ``name``,
    each as long as it can be."""
    return tuple((state, make(name)) for state, _, make in _FORMS)


#: Bytes the longest derived name adds to a message's name (DUE~: 21).
OVERHEAD = max(len(derived) - len("n") for _, derived in derived_names("n"))


def longest_name(name_max):
    """The longest message name (in bytes) a spool whose NAME_MAX is ``name_max`` takes."""
    return name_max - OVERHEAD


def name_max(directories):
    """The smallest NAME_MAX of ``directories`` (they may be on different file systems)."""
    found = []
    for directory in directories:
        try:
            found.append(os.pathconf(directory, "PC_NAME_MAX"))
        except (OSError, ValueError):  # no answer: the common limit
            found.append(DEFAULT_NAME_MAX)
    return min((n for n in found if n and n > 0), default=DEFAULT_NAME_MAX)


def too_long(name, limit):
    """Why message ``name`` cannot go through a spool whose NAME_MAX is ``limit``;
    ``None`` when every derived name fits (the usual case, checked without encoding)."""
    if name.isascii() and len(name) + OVERHEAD <= limit:
        return None
    size = len(os.fsencode(name))
    if size + OVERHEAD <= limit:
        return None
    over = [f"{state}/{shape} ({len(os.fsencode(make(name)))} bytes)"
            for state, shape, make in _FORMS if len(os.fsencode(make(name))) > limit]
    return (f"its file name is {size} bytes long, too long for the spool: this file "
            f"system allows names of {limit} bytes (NAME_MAX), and the spool must be "
            f"able to name it {', '.join(over)}, so the longest message name it takes "
            f"is {longest_name(limit)} bytes")

