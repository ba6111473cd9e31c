"""Deleting what housekeeping finds in the spool, whatever kind of entry it is.

Housekeeping -- ``tmp/`` and half-written state files after a crash,
``done/`` after delivery, a state file of a message that left -- deletes
entries it did not open.  Anyone can put anything there (a person, a
script, another program on the same directory), and one ``IsADirectoryError``
used to stop every pass for good (issue 11, round 2, finding 1).  So:

* a file, symlink (never its target), FIFO or socket is unlinked;
* an empty directory is removed (``rmdir``);
* a directory with something in it, or an entry this user may not delete, is
  left as it is -- somebody's files are not ours to delete -- and said once
  per process (a warning naming the path and what to do), not every pass;
* one already gone (another process took it), or with a name too long to
  exist, is fine.

No error from one entry ever leaves these functions: the caller's loop goes
on with the next entry.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading

from ...util.printable import SafeLogger
from ...util.regular_files import kind_of

log = SafeLogger(logging.getLogger("pyramid_txmail.leftovers"))

_reported = set()
_reported_lock = threading.Lock()


def report_once(path, why, level=logging.WARNING):
    """Log ``path: why`` the first time this process sees that pair; True if logged."""
    with _reported_lock:
        if (path, why) in _reported:
            return False
        _reported.add((path, why))
    log.log(level, "%s: %s", path, why)
    return True


def remove(path):
    """Delete the spool entry ``path`` if it is safe to (see the module docstring).

    Returns whether this call removed it.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # no such entry can exist (a state file of
            return False  # a name too long to have one: namelimits)
        report_once(path, f"cannot be examined ({exc.strerror}); left as it is")
        return False
    try:
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        what = kind_of(path, info) if not stat.S_ISREG(info.st_mode) else "a file"
        report_once(path, f"{what} that cannot be removed ({exc.strerror}); left as it "
                    "is -- it is not mail, so nothing waits on it, but remove it by hand")
        return False
    return True
