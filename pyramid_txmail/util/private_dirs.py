"""Directories only their owner can use: created 0700, checked before use.

The spool (and file delivery's directory) holds mail: nobody but the user
that runs the application and ``txmail-qp`` may read it or put files in it.
:func:`make_private_dirs` creates a directory and every missing parent 0700
whatever the umask; :func:`why_unusable` says why an existing one cannot be
used -- another owner, a read-only file system, no write permission.
"""
from __future__ import annotations

import errno
import os
import pwd

DIR_MODE = 0o700


def make_private_dirs(path):
    """Create ``path`` and any missing parent, each 0700 whatever the umask.

    (``os.makedirs`` gives the parents it creates the umask's mode -- 0777
    under umask 000 -- and a world-writable parent lets anyone replace the
    spool.)
    """
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):  # the path, or the nearest existing parent, is a file
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        os.chmod(directory, DIR_MODE)


def user_name(uid):
    """``uid 1000 (app)``, or ``uid 1000`` for a uid without a name."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def why_unusable(directory):
    """Why this process must not use ``directory`` (a phrase), or ``None``.

    The owner check is what stops root, whom permission bits do not stop:
    files root wrote into another user's spool would be 0600 root's,
    unreadable to that user's processor.
    """
    try:
        info = os.stat(directory)
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
    except OSError as exc:
        return f"cannot be used: {exc.strerror}"
    euid = os.geteuid()
    if info.st_uid != euid:
        return (f"is owned by {user_name(info.st_uid)}, not by this user "
                f"({user_name(euid)}); run as its owner (files are 0600, so the owner "
                "could not read what this user writes)")
    if read_only:
        return "is on a read-only file system"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"is not writable by this user ({user_name(euid)})"
    return None


def fsync_dir(path):
    """fsync a directory, so that a rename or new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
