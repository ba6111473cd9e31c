"""Drain one full spool with one tool, as a child process, and check it delivered.

Every drain starts from a spool holding ``count`` copies of the same
~2 KB file (written by our own enqueue path, so repoze.sendmail's ``qp``
reads the same bytes: the format is the same Maildir) and ends when the
tool exits; the spool must then be empty, or the figure would be a lie.
``smtp-source`` sends the same message (without the envelope lines) and is
the floor: what a C client gets out of the same sink.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
from pathlib import Path

from harness import (BIN, POSTFIX_ENV, RECIPIENT, BenchError, median, postfix_tool,
                     run_timed, run_timed_together, strip_envelope)

SENDER_ADDRESS = "sender@example.com"


@functools.lru_cache(maxsize=None)
def qp_has_workers_flag():
    """``txmail-qp --workers`` is being added in main; until then mail.workers is set."""
    help_text = subprocess.run([str(BIN / "txmail-qp"), "--help"], capture_output=True,
                               text=True).stdout
    return "--workers" in help_text


def write_ini(directory, spool, sink, workers=None, qp_processes=1):
    """``qp_processes``: ``mail.processes`` of the one txmail-qp (None: its default,
    one per usable core; 1: a single process, as before the setting existed)."""
    lines = ["[app:main]", "use = egg:pyramid_txmail", f"mail.queue_path = {spool}",
             "mail.host = 127.0.0.1", f"mail.port = {sink.port}"]
    if qp_processes is not None:
        lines.append(f"mail.processes = {qp_processes}")
    if workers is not None and not qp_has_workers_flag():
        lines.append(f"mail.workers = {workers}")
    path = Path(directory) / "bench.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def txmail_argv(ini, workers=None):
    """txmail-qp as cron runs it (docs/operating.rst: ``-q``), no app (no subscribers to load)."""
    argv = [BIN / "txmail-qp", ini, "--no-app", "-q"]
    if workers is not None and qp_has_workers_flag():
        argv += ["--workers", str(workers)]
    return argv


def bytecode_env(ctx):
    """The children's environment, with compiled bytecode cached as an installed package has it.

    A session may set PYTHONDONTWRITEBYTECODE (the one these benchmarks were
    written in does): every txmail-qp run then compiled pyramid_txmail's modules
    from source -- an editable install has no .pyc files -- while repoze.sendmail's
    qp ran from the .pyc files pip wrote when it installed it.  The start-up
    figure was then mostly our compiler's (py-spy: source_to_code 19% of a 4,000
    message drain).  The cache is kept in the run's scratch directory
    (PYTHONPYCACHEPREFIX), so the repository gets none; the warm-up pass of
    :func:`startup` fills it.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(ctx.workdir / "pycache")
    return env


def timed(argv, sink, env=None, processes=1):
    """:func:`run_timed`, plus the CPU time the sink spent meanwhile.

    ``processes`` > 1 starts that many copies of ``argv`` at once.
    """
    before = sink.cpu()
    run = run_timed_together([argv] * processes, env=env)
    run.sink_cpu = sink.cpu() - before
    return run


def _left_in(spool, states):
    left = {}
    for state in states:
        try:
            names = os.listdir(spool / state)
        except FileNotFoundError:
            continue
        if names:
            left[state] = len(names)
    return left


def _check(run, spool, states, what):
    left = _left_in(spool, states)
    if run.returncode != 0 or left:
        tail = " | ".join(run.stderr.strip().splitlines()[-3:])
        raise BenchError(f"{what}: exit status {run.returncode}, left in the spool: "
                         f"{left or 'nothing'}; stderr: {tail or '(empty)'}")
    return run


def drain_txmail(ctx, sink, count, workers=None, before=None, processes=1, qp_processes=1):
    """``before(spool)``, if given, runs on the filled spool before the clock starts.

    ``processes`` txmail-qp commands drain the one spool together (claims
    are atomic renames), each with ``workers`` workers and ``qp_processes``
    (``mail.processes``; None: its default, the usable cores).
    """
    base = ctx.scratch(f"drain-txmail-p{processes}w{workers}q{qp_processes}")
    spool = base / "spool"
    ctx.fill(spool, count)
    if before is not None:
        before(spool)
    ini = write_ini(base, spool, sink, workers, qp_processes)
    run = timed(txmail_argv(ini, workers), sink, env=bytecode_env(ctx), processes=processes)
    return _check(run, spool, ("new", "cur", "deferred", "failed", "meta", "done"),
                  f"{processes} x txmail-qp --workers {workers} into {sink.name}")


def drain_repoze(ctx, sink, count):
    base = ctx.scratch("drain-repoze")
    spool = base / "spool"
    ctx.fill(spool, count)
    run = timed([BIN / "qp", "--hostname", "127.0.0.1", "--port", str(sink.port),
                 "--no-tls", spool], sink, env=bytecode_env(ctx))
    return _check(run, spool, ("new", "cur"), f"repoze.sendmail qp into {sink.name}")


def drain_smtp_source(ctx, sink, count, sessions):
    """smtp-source: ``-d`` keeps each session's connection for all its messages."""
    message = ctx.workdir / "smtp-source-message.txt"
    if not message.exists():
        message.write_bytes(strip_envelope(ctx.template()).replace(b"\r\n", b"\n"))
    run = timed([postfix_tool("smtp-source"), "-d", "-s", str(sessions), "-m", str(count),
                 "-f", SENDER_ADDRESS, "-t", RECIPIENT, "-F", message,
                 f"127.0.0.1:{sink.port}"], sink, env=POSTFIX_ENV)
    if run.returncode != 0:
        raise BenchError(f"smtp-source -s {sessions} into {sink.name}: exit status "
                         f"{run.returncode}: {run.stderr.strip()[-300:]}")
    return run


def startup(ctx, sink, tool):
    """Median ``(wall, cpu)`` of a pass over an empty spool: the cost paid before any mail.

    One warm-up pass first (byte-compiling, a cold page cache), not counted.
    """
    runs = []
    runs_wanted = 2 if ctx.options.quick else 1 + max(3, ctx.options.repeats)
    for _ in range(runs_wanted):
        base = ctx.scratch(f"startup-{tool}")
        spool = base / "spool"
        ctx.fill(spool, 0)
        if tool == "txmail":
            run = run_timed(txmail_argv(write_ini(base, spool, sink, 1), 1),
                            env=bytecode_env(ctx))
        elif tool == "txmail-default":  # mail.processes' default: a parent and its children
            run = run_timed(txmail_argv(write_ini(base, spool, sink, None, None)),
                            env=bytecode_env(ctx))
        else:
            run = run_timed([BIN / "qp", "--hostname", "127.0.0.1", "--port",
                             str(sink.port), "--no-tls", spool], env=bytecode_env(ctx))
        runs.append(_check(run, spool, ("new",), f"{tool} over an empty spool"))
    counted = runs[1:] or runs
    return Startup(median([r.wall for r in counted]), median([r.cpu for r in counted]),
                   median([r.user for r in counted]))


@dataclasses.dataclass(frozen=True)
class Startup:
    wall: float
    cpu: float
    user: float = 0.0


@functools.lru_cache(maxsize=None)
def _cached_startup(ctx, sink_name, tool):
    return startup(ctx, ctx.sink(sink_name), tool)


def startup_of(ctx, tool):
    """Start-up of ``tool``, measured once per run (against smtp-sink)."""
    return _cached_startup(ctx, "smtp-sink", tool)


def strict_sink_check(ctx, count=20):
    """``{tool: (accepted by the sink, queue files left, dotfiles left)}``, strict aiosmtpd.

    repoze.sendmail's qp sends bare LF line endings; aiosmtpd splits DATA
    at CRLF and refuses the "line" (500), and qp then sets the message aside
    as a ``.rejected-`` dotfile that no processor looks at again.
    """
    from harness import sink_count, start_aiosmtpd_sink

    found = {}
    for tool in ("txmail", "repoze"):
        sink = start_aiosmtpd_sink(lenient=False)
        try:
            base = ctx.scratch(f"strict-{tool}")
            spool = base / "spool"
            ctx.fill(spool, count)
            if tool == "txmail":
                run_timed(txmail_argv(write_ini(base, spool, sink, 1), 1))
            else:
                run_timed([BIN / "qp", "--hostname", "127.0.0.1", "--port",
                           str(sink.port), "--no-tls", spool])
        finally:
            accepted = sink_count(sink)
        names = [n for s in ("new", "cur", "deferred", "failed") if (spool / s).is_dir()
                 for n in os.listdir(spool / s)]
        hidden = sum(n.startswith(".") for n in names)
        found[tool] = (accepted, len(names) - hidden, hidden)
    return found
