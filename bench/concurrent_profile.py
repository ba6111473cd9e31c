"""Why the concurrent section missed a target: py-spy on the txmail app under ab -c 8.

Two samplings of the same app under the same load, one after the other:

- ``--gil``: only the thread holding the interpreter lock is sampled, so the
  shares say where the CPU-bound Python time goes (composing, committing,
  waitress) and the sample count says how much of the wall clock the lock
  was held at all;
- ``--idle``: every thread, running or not, so the shares say where the 8
  worker threads spend the wall clock: composing, in the vote's fsync, in
  the finish's shared flush, or idle waiting for waitress to hand them a
  request.  A thread waiting to take the lock back after a system call is
  still inside that call's frame: "fsync" includes that wait.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

import machine
from harness import BIN, table

CONCURRENCY = 8
RATE = 250  # py-spy samples per second

#: (label, frame text(s) that must be on the stack, frame text that must not), in
#: table order; frames as py-spy's raw format writes them: ``name (file:line)``.
GIL_FRAMES = (
    ("the whole request (waitress task)", "WSGITask.execute (", None),
    ("  the view building its EmailMessage (headers, set_content)", "_txmail_view (",
     "Mailer.send ("),
    ("  request.mailer.send(msg)", "Mailer.send (", None),
    ("    of which the email package's header registry",
     ("Mailer.send (", "header_store_parse ("), None),
    ("    of which serializing (as_bytes)", ("Mailer.send (", "Message.as_bytes ("), None),
    ("  the commit (pyramid_tm -> transaction)", "TransactionManager.commit (", None),
    ("    the spool's vote (write, fsync, rename into prepared/)", "QueueOutbox.vote (", None),
    ("    the spool's finish (rename into new/, flush new/)", "QueueOutbox.finish (", None),
    ("waitress's main loop (accepting, socket I/O)", "wasyncore.py", None),
)


def _py_spy():
    path = BIN / "py-spy"
    return str(path) if path.exists() else shutil.which("py-spy")


def _sample(tool, server, ab, requests, mode, out):
    """Run ab against ``server`` while py-spy samples it; ``(load, seconds)``."""
    spy = subprocess.Popen([tool, "record", mode, "--format", "raw", "--rate", str(RATE),
                            "--nonblocking", "-o", str(out), "--pid", str(server.process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.2)  # short: the time before ab starts counts as idle workers
    load = machine.load()
    started = time.perf_counter()
    ab(server, requests)
    seconds = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C, not on SIGTERM
    _, err = spy.communicate(timeout=60)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
    return load, seconds


def why(make_server, ab, requests):
    """The "Why" part of RESULTS.md's concurrent section (Markdown)."""
    tool = _py_spy()
    if tool is None:
        return ("### Why\n\npy-spy is not installed (`make bench` installs it into the "
                "venv), so no profile was taken.")
    server = make_server()
    gil, idle = (server.spool.parent / name for name in ("gil.txt", "idle.txt"))
    try:
        server.wait()
        ab(server, 100)
        gil_load, seconds = _sample(tool, server, ab, requests, "--gil", gil)
        idle_load, _ = _sample(tool, server, ab, requests, "--idle", idle)
    except RuntimeError as exc:
        return f"### Why\n\n{exc}"
    finally:
        server.stop()
    return "\n".join([
        "### Why: where the interpreter lock is held (py-spy --gil)", "",
        f"The txmail app under the same `ab -c {CONCURRENCY} -n {requests}` ({gil_load}); "
        "share of the samples taken while a thread held the GIL in which each function "
        "was on the stack:", "", summarize(gil.read_text(), seconds), "",
        "### Why: where the worker threads spend the wall clock (py-spy --idle)", "",
        f"The same again ({idle_load}), every thread sampled whether it runs or waits; "
        "shares of the 8 waitress worker threads' samples (a thread taking the interpreter "
        "lock back after a system call is counted in that call):", "",
        workers(idle.read_text())])


def _stacks(text):
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            yield stack, int(n)


def summarize(text, seconds=None):
    """Per named frame: the share of GIL-held samples with it on the stack.

    With ``seconds`` (how long the sampled load ran) it also says how much
    of that time any thread held the interpreter lock at all.
    """
    total, counts = 0, [0] * len(GIL_FRAMES)
    for stack, n in _stacks(text):
        total += n
        for i, (_, needle, unless) in enumerate(GIL_FRAMES):
            needles = (needle,) if isinstance(needle, str) else needle
            if all(x in stack for x in needles) and not (unless and unless in stack):
                counts[i] += n
    if not total:
        return "(no samples)"
    rows = [(label, f"{100 * count / total:.0f}%")
            for (label, _, _), count in zip(GIL_FRAMES, counts)]
    held = ""
    if seconds:
        held = (f"  A thread held the interpreter lock in {100 * total / (RATE * seconds):.0f}% "
                f"of the {seconds:.1f} s sampled (py-spy samples {RATE} times a second).")
    return table(["on the stack", "share of GIL-held samples"], rows) + \
        f"\n\n{total} samples.{held}"


def _last(stack):
    return stack.rsplit(";", 1)[-1]


#: Where a worker thread is, by its stack: first match wins.  (The bench app
#: wraps ``os.fsync`` in a Python function named ``fsync`` to count calls, so
#: a thread in an fsync has that frame last.)
WORKER_STATES = (
    ("idle: waiting for waitress to hand it a request", lambda s: "WSGITask.execute (" not in s),
    ("composing: request.mailer.send(msg)", lambda s: "Mailer.send (" in s),
    ("composing: the view building its EmailMessage", lambda s: "_txmail_view (" in s),
    ("the vote: fsync of the message file", lambda s: "QueueOutbox.vote (" in s
     and "fsync (" in _last(s)),
    ("the vote: the rest (creating the file in tmp/, writing, renaming)",
     lambda s: "QueueOutbox.vote (" in s),
    ("the finish: the shared fsync of new/, leading it", lambda s: "QueueOutbox.finish (" in s
     and "fsync (" in _last(s)),
    ("the finish: waiting for another thread's fsync of new/",
     lambda s: "QueueOutbox.finish (" in s and "wait (" in _last(s)),
    ("the finish: rename into new/ and the rest", lambda s: "QueueOutbox.finish (" in s),
    ("the rest of the request (Pyramid, pyramid_tm, transaction, events, waitress)",
     lambda s: True),
)


def workers(text):
    """Shares of the worker threads' wall-clock samples, by :data:`WORKER_STATES`."""
    total, counts = 0, [0] * len(WORKER_STATES)
    for stack, n in _stacks(text):
        if "handler_thread (" not in stack:  # the main loop, py-spy's own
            continue
        total += n
        for i, (_, test) in enumerate(WORKER_STATES):
            if test(stack):
                counts[i] += n
                break
    if not total:
        return "(no samples)"
    rows = [(label, f"{100 * count / total:.0f}%")
            for (label, _), count in zip(WORKER_STATES, counts)]
    return table(["a worker thread is", "share of its wall clock"], rows) + \
        f"\n\n{total} samples of the worker threads."
