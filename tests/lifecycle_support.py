"""Watching a queue's messages move, and naming the code that moved each one
(tests/test_queue_lifecycle.py).

A lifecycle row of :mod:`pyramid_txmail.queue.states` is ``(from, to, cause, code)``:
``code`` is the function that is on the call stack whenever that cause moves a
message (``tpc_finish``, ``mail.commit_check``'s resolution, ``txmail-queue
retry``'s library half...).  The watchers here record every move with the
functions on the stack when it happened -- the spool's renames, unlinks and
file creations (``os`` wrapped for the duration of a test), the outbox's state
changes (SQLite triggers calling back into Python) -- and :func:`unexplained`
and :func:`explained` attribute each move to the innermost row whose ``code`` was
on the stack.

:func:`moving_functions` is the other half of the check: every function of the
queue backends and the scripts that renames or deletes a file,
or UPDATEs, DELETEs or INSERTs outbox rows, found by reading their source (ast).
Each one must have been on the stack of some recorded change in the test, or be
named with a reason in the test's exemptions: a new way of moving a message
cannot be added without the test seeing it, and then without a row of its own.
"""
from __future__ import annotations

import ast
import contextlib
import os
import pathlib
import sys
import threading

import sqlalchemy as sa

from pyramid_txmail.queue.states import CREATED, GONE

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pyramid_txmail"
#: Where messages are moved: the queue backends and the console scripts.
SCANNED = ("queue", "scripts")
FILE_CALLS = {"os.rename", "os.replace", "os.unlink", "os.remove", "os.rmdir"}
ROW_CALLS = {"outbox.update", "outbox.delete", "outbox.insert"}
SQL_TEXTS = ("UPDATE txmail_outbox", "DELETE FROM txmail_outbox", "INSERT INTO txmail_outbox")


def code_path(skip=1):
    """The pyramid_txmail functions on the calling thread's stack, innermost first."""
    frame, names = sys._getframe(skip), []
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("pyramid_txmail."):
            names.append(f"{module}.{frame.f_code.co_qualname}")
        frame = frame.f_back
    return tuple(names)


class Seen:
    """The moves recorded: ``(from, to, code path)``; and every code path that changed
    a file or a row at all (moves, state files, re-indexing), for the meta-check."""

    def __init__(self):
        self.moves, self.paths, self._lock = [], [], threading.Lock()
        self.recording = True

    def add(self, source, target, path):
        with self._lock:
            if self.recording:
                self.moves.append((source, target, path))

    def touched(self, path):
        with self._lock:
            if self.recording:
                self.paths.append(path)

    @contextlib.contextmanager
    def paused(self):
        """For the test's own stage-setting (a crash's leftovers): not the code's moves."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True

    def functions(self):
        return {name for path in self.paths + [m[2] for m in self.moves] for name in path}


def cause_of(move, lifecycle):
    """The row of ``lifecycle`` that explains ``move``: of the rows for its (from, to),
    the one whose code is innermost on its stack; None when none is on it."""
    source, target, path = move
    rows = [row for row in lifecycle if row[:2] == (source, target)]
    on_stack = [(path.index(row.code), row) for row in rows if row.code in path]
    return min(on_stack)[1] if on_stack else None


def explained(seen, lifecycle):
    return {cause_of(move, lifecycle) for move in seen.moves} - {None}


def unexplained(seen, lifecycle):
    """Moves no row explains, each with the code that made it (innermost first)."""
    return sorted({(s, t, path[:4]) for s, t, path in seen.moves
                   if cause_of((s, t, path), lifecycle) is None})


def watch_spool(monkeypatch, root, states):
    """Record the moves under the spool ``root`` between ``states`` (its directories):
    renames between two of them, unlinks and rmdirs in one, files created in tmp/."""
    seen = Seen()
    rename, unlink, rmdir, open_ = os.rename, os.unlink, os.rmdir, os.open

    def state_of(path):
        relative = os.path.relpath(os.fspath(path), root)
        top = relative.split(os.sep)[0]
        return top if top in states and not relative.startswith("..") else None

    def inside(path):
        return not os.path.relpath(os.fspath(path), root).startswith("..")

    def recording_rename(source, target, *args, **kwargs):
        rename(source, target, *args, **kwargs)
        if inside(source):
            seen.touched(code_path(2))
        moved = (state_of(source), state_of(target))
        if all(moved) and moved[0] != moved[1]:  # deferred/ re-indexing itself is no move
            seen.add(*moved, code_path(2))

    def deleting(real):
        def recording(path, *args, **kwargs):
            real(path, *args, **kwargs)
            if inside(path):
                seen.touched(code_path(2))
            if state_of(path):
                seen.add(state_of(path), GONE, code_path(2))
        return recording

    def recording_open(path, flags, *args, **kwargs):
        fd = open_(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and inside(path):
            seen.touched(code_path(2))
            if state_of(path) == "tmp":
                seen.add(CREATED, "tmp", code_path(2))
        return fd

    monkeypatch.setattr(os, "rename", recording_rename)
    monkeypatch.setattr(os, "unlink", deleting(unlink))
    monkeypatch.setattr(os, "rmdir", deleting(rmdir))
    monkeypatch.setattr(os, "open", recording_open)
    return seen


#: The database records each row's state change itself, with the Python code that
#: made it (``txmail_code_path()``, a function of each connection: see watch_outbox).
OUTBOX_TRIGGERS = (
    "CREATE TABLE moves (source TEXT, target TEXT, code TEXT)",
    "CREATE TRIGGER created AFTER INSERT ON txmail_outbox "
    "BEGIN INSERT INTO moves VALUES ('{created}', NEW.state, txmail_code_path()); END",
    "CREATE TRIGGER changed AFTER UPDATE OF state ON txmail_outbox "
    "WHEN OLD.state != NEW.state "
    "BEGIN INSERT INTO moves VALUES (OLD.state, NEW.state, txmail_code_path()); END",
    "CREATE TRIGGER deleted AFTER DELETE ON txmail_outbox "
    "BEGIN INSERT INTO moves VALUES (OLD.state, '{gone}', txmail_code_path()); END",
)


@contextlib.contextmanager
def watch_outbox():
    """Every SQLite connection opened meanwhile gets ``txmail_code_path()`` (for the
    triggers: SQLite calls it on the executing thread, inside ``execute``), and every
    UPDATE/DELETE/INSERT of the outbox is noted with the code that ran it."""
    seen = Seen()

    def on_connect(dbapi_connection, record):
        if hasattr(dbapi_connection, "create_function"):
            dbapi_connection.create_function(
                "txmail_code_path", 0, lambda: "\n".join(code_path(2)))

    def on_execute(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("UPDATE", "DELETE", "INSERT")) \
                and "txmail_outbox" in statement:
            seen.touched(code_path(2))

    sa.event.listen(sa.engine.Engine, "connect", on_connect)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "connect", on_connect)
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", on_execute)


def read_outbox_moves(engine, seen):
    with engine.connect() as connection:
        for source, target, code in connection.exec_driver_sql(
                "SELECT source, target, code FROM moves"):
            seen.add(source, target, tuple(code.split("\n")) if code else ())


def moving_functions(calls, texts=()):
    """``module.qualname`` of every function under :data:`SCANNED` that calls one of
    ``calls`` (``os.rename``, ``outbox.update``...) or holds SQL starting one of
    ``texts``: the code that can move a message."""
    found = set()
    for directory in SCANNED:
        for path in sorted((PACKAGE / directory).rglob("*.py")):
            module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            _scan(ast.parse(path.read_text()), module, [], calls, texts, found)
    return found


def _scan(node, module, scope, calls, texts, found):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            _scan(child, module, scope + [child.name], calls, texts, found)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = scope + [child.name]
            if _moves(child, calls, texts):
                found.add(f"{module}.{'.'.join(qualname)}")
            _scan(child, module, qualname + ["<locals>"], calls, texts, found)


def _moves(function, calls, texts):
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if any(name == call or name.endswith("." + call) for call in calls):
                return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and any(text in node.value for text in texts):
            return True
    return False
