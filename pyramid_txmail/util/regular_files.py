"""Opening a spool file that must be a regular file: never through a symlink, never blocking.

Whatever sits in a spool directory is opened with ``O_NOFOLLOW | O_NONBLOCK``
and checked with ``fstat``: a symlink is refused instead of followed (a
queue file must not make the processor read, touch or send a file outside
the spool), and a FIFO, socket or device is refused instead of waited on (a
FIFO's ``open`` or ``read`` blocks until a writer comes, which stopped a
one-shot pass and ``txmail-queue list`` for good).  The caller turns
:class:`NotRegularFile` into a dead letter or a listed problem, with its
reason.  An ``lstat`` comes first so that a device is never even opened
(opening one may have side effects).
"""
from __future__ import annotations

import errno
import os
import stat

#: Flags for reading a spool file (``O_CLOEXEC``: no child process inherits it).
READ_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
              | getattr(os, "O_CLOEXEC", 0))

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


class NotRegularFile(OSError):
    """A spool entry that is not a regular file; ``str()`` says what it is instead."""

    def __init__(self, path, kind):
        super().__init__(errno.EINVAL, f"not a regular file but {kind}", path)
        self.kind = kind


def kind_of(path, info):
    """``a symbolic link to TARGET``, ``a FIFO (named pipe)``... for ``lstat`` ``info``."""
    if stat.S_ISLNK(info.st_mode):
        try:
            return f"a symbolic link to {os.readlink(path)}"
        except OSError:
            return "a symbolic link"
    for test, kind in _KINDS:
        if test(info.st_mode):
            return kind
    return "a special file"


def check_regular(path, info):
    """Raise :class:`NotRegularFile` unless ``info`` (an ``lstat``) is a regular file's."""
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(path, kind_of(path, info))


def open_regular(path):
    """A read-only fd of the regular file ``path`` (:class:`NotRegularFile` otherwise).

    ``FileNotFoundError`` when it is gone (another process moved it).
    """
    check_regular(path, os.lstat(path))
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # replaced meanwhile
            check_regular(path, os.lstat(path))
        raise
    try:
        check_regular(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_file(path):
    """:func:`open_regular` as a binary file object (closes its fd)."""
    return os.fdopen(open_regular(path), "rb")
