"""What every benchmark section shares: sinks, timed child processes, spools, tables.

Nothing here measures anything by itself.  A section (see ``run.py``) gets a
:class:`Context` -- the options, a scratch directory on the repository's
disk, the SMTP sinks started once per run -- and returns a
:class:`SectionResult`: Markdown for bench/RESULTS.md, lines for the
terminal and the targets it checked.
"""
from __future__ import annotations

import dataclasses
import email.message
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTFIX_ROOT = ROOT / ".deps" / "postfix"
POSTFIX_SBIN = POSTFIX_ROOT / "usr" / "sbin"
POSTFIX_ENV = dict(os.environ, LD_LIBRARY_PATH=str(POSTFIX_ROOT / "usr" / "lib" / "postfix"))
BIN = Path(sys.executable).parent
SENDER = "Benchmark Sender <sender@example.com>"
RECIPIENT = "rcpt@example.net"


class BenchError(Exception):
    """Something the person running the benchmark must fix (one line, exit 1)."""


# -- results ------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """One target of the issue, checked against a figure of this run."""

    text: str
    met: bool
    detail: str


@dataclasses.dataclass
class SectionResult:
    """What a section hands back: Markdown for RESULTS.md, lines for the terminal."""

    title: str
    markdown: str
    lines: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)


def table(headers, rows):
    """A Markdown table; numbers are already formatted by the caller."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def median(values):
    return statistics.median(values)


def rate(count, seconds):
    """Messages per second; ``None`` when there is no usable time to divide by."""
    return count / seconds if seconds else None


def net_seconds(wall, startup):
    """Wall clock minus the tool's start-up.

    ``None`` when the start-up is most of the run (a queue too small to
    say anything about the steady rate, as in --quick).
    """
    net = wall - startup
    return net if net > 0.2 * wall else None


def fmt(value, spec=".0f", suffix=""):
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


# -- child processes -----------------------------------------------------------


@dataclasses.dataclass
class ChildRun:
    """A finished child: wall-clock seconds and its peak resident set."""

    argv: list
    wall: float
    peak_rss_kb: int
    cpu: float  # user + system seconds of the child (its threads included)
    user: float  # of which user time: for Python, time holding the interpreter lock
    returncode: int
    stderr: str
    sink_cpu: float = 0.0  # CPU seconds the sink used meanwhile (see drains.timed)


def _peak_rss_kb(pid):
    """The high-water mark of ``pid``'s resident set (VmHWM), 0 once it has exited.

    Not ``ru_maxrss``: Linux carries a process's peak across fork and exec,
    so every child of this (larger) Python process would report at least
    this process's size.  VmHWM belongs to the child's own address space.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_timed(argv, *, env=None, timeout=1800, cwd=None):
    """Run ``argv`` to completion: wall clock from start to exit, and the child's peak RSS.

    CPU time comes from ``wait4``'s rusage of exactly this child: on a busy
    machine it is steadier than the wall clock.
    The peak is VmHWM read every few milliseconds while the child runs (it
    only grows, so the last reading misses at most the final milliseconds).
    stderr goes to a file, so a chatty child can never block on a full pipe.
    """
    return run_timed_together([argv], env=env, timeout=timeout, cwd=cwd)


def run_timed_together(argvs, *, env=None, timeout=1800, cwd=None):
    """Start every command at once; one :class:`ChildRun` for all of them.

    Wall clock until the last one exits, CPU times summed, the largest peak
    RSS of any one, the first non-zero exit status, stderr concatenated.
    """
    argvs = [[str(a) for a in argv] for argv in argvs]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        running = {subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, cwd=cwd): argv for argv in argvs}
        deadline, peak, cpu, user, status = start + timeout, 0, 0.0, 0.0, 0
        while running:
            for proc in list(running):
                peak = max(peak, _peak_rss_kb(proc.pid))
                pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(code)
                    status = status or proc.returncode
                    cpu += usage.ru_utime + usage.ru_stime
                    user += usage.ru_utime
                    del running[proc]
            if running and time.perf_counter() > deadline:
                for proc in running:
                    proc.kill()
                    proc.wait()
                raise BenchError(f"{argvs[0][0]} did not finish within {timeout}s")
            if running:
                time.sleep(0.003)
        wall = time.perf_counter() - start
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return ChildRun(argvs[0], wall, peak, cpu, user, status, text)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port, process, name):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited at start-up (status {process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within 15 s")


def stop_process(process):
    """SIGTERM ``process``, then SIGKILL if it has not ended within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_cpu(pid):
    """User + system seconds process ``pid`` (all its threads) has used so far
    (/proc/PID/stat; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

@dataclasses.dataclass
class Sink:
    """An SMTP sink process on 127.0.0.1 that every drain of the run shares."""

    name: str
    port: int
    process: subprocess.Popen

    def cpu(self):
        """User + system seconds the sink process has used so far."""
        return process_cpu(self.process.pid)

    def stop(self):
        stop_process(self.process)


def postfix_tool(name):
    path = POSTFIX_SBIN / name
    if not path.exists():
        raise BenchError(f"{path} is missing: run `make bench` (it unpacks Debian's "
                         "postfix package into .deps/postfix)")
    return path


def start_smtp_sink():
    """Postfix's smtp-sink, discarding (no -d dump), backlog 256."""
    port = free_port()
    user = ["-u", "nobody"] if os.getuid() == 0 else []
    process = subprocess.Popen([str(postfix_tool("smtp-sink")), *user,
                                f"127.0.0.1:{port}", "256"], env=POSTFIX_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_listening(port, process, "smtp-sink")
    return Sink("smtp-sink", port, process)


def start_aiosmtpd_sink(lenient=True):
    """aiosmtpd in a process of its own (bench/aiosmtpd_sink.py), discarding.

    Lenient about line length by default, or repoze.sendmail's bare-LF
    messages would all be refused (see aiosmtpd_sink.py): this sink measures
    speed.  Its stderr (``received N`` at exit) is kept for :func:`sink_count`.
    """
    port = free_port()
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "aiosmtpd_sink.py"),
                                str(port), *(["--lenient"] if lenient else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_listening(port, process, "aiosmtpd sink")
    return Sink("aiosmtpd" if lenient else "aiosmtpd (strict)", port, process)


def sink_count(sink):
    """Stop an aiosmtpd sink and return how many messages it accepted."""
    sink.stop()
    text = sink.process.stderr.read().decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("received "):
            return int(line.split()[1])
    raise BenchError(f"the {sink.name} sink did not report its count: {text.strip()[-200:]}")


SINK_STARTERS = {"smtp-sink": start_smtp_sink, "aiosmtpd": start_aiosmtpd_sink}


# -- the run's context -----------------------------------------------------------


@dataclasses.dataclass
class Options:
    quick: bool
    sizes: list          # queue sizes of the growth section
    drain_size: int      # messages per drain in the drain section
    enqueue_count: int   # messages (= transactions) per enqueue run
    repeats: int
    sinks: list          # sink names, in table order
    workers: list        # txmail-qp worker counts of the drain section


class Context:
    """Options, scratch space on the repository's disk and the run's sinks."""

    def __init__(self, options, workdir):
        self.options = options
        self.workdir = Path(workdir)
        self._sinks = {}
        self._scratch = 0
        self._template = None

    def sink(self, name, start=None):
        """The sink ``name``, started on first use (by ``start()``, default the
        :data:`SINK_STARTERS` entry) and shared by the whole run."""
        if name not in self._sinks:
            self._sinks[name] = (start or SINK_STARTERS[name])()
        sink = self._sinks[name]
        if sink.process.poll() is not None:
            raise BenchError(f"the {name} sink died (status {sink.process.returncode})")
        return sink

    def close(self):
        for sink in self._sinks.values():
            sink.stop()

    def scratch(self, label):
        """A fresh empty directory under the work directory."""
        self._scratch += 1
        path = self.workdir / f"{self._scratch:04d}-{label}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def template(self):
        """The bytes of one spool file written by our own durable path (~2 KB)."""
        if self._template is None:
            self._template = _spool_file_from_our_path(self.scratch("template"))
        return self._template

    def fill(self, spool_dir, count):
        """``count`` copies of :meth:`template` in ``spool_dir/new``, flushed to disk.

        Plain writes and one ``sync()`` at the end: filling is not measured,
        but the drain must not find a page cache full of dirty pages.
        """
        from pyramid_txmail.queue.maildir.spool import Spool

        Spool(str(spool_dir))
        data, new, base = self.template(), Path(spool_dir) / "new", int(time.time()) - 60
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for i in range(count):
            fd = os.open(new / f"{base}.M{i % 1000000:06d}P{os.getpid()}Q{i}.bench",
                         flags, 0o600)
            os.write(fd, data)
            os.close(fd)
        os.sync()


def make_message(i=0):
    """A realistic ~2 KB plain-text notification with one recipient."""
    msg = email.message.EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = f"Your order #{100000 + i} has shipped"
    paragraph = ("Thank you for your order. The parcel left our warehouse today and "
                 "should reach you within two to three working days. You can follow "
                 "it with the tracking link below; the carrier updates it every few "
                 "hours.\n\n")
    msg.set_content("Hello,\n\n" + paragraph * 7 + "Kind regards,\nThe Shop\n")
    return msg


def _spool_file_from_our_path(directory):
    import transaction
    from pyramid.config import Configurator

    from pyramid_txmail import get_mailer

    spool = directory / "spool"
    config = Configurator(settings={"mail.queue_path": str(spool)})
    config.include("pyramid_txmail")
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    with manager:
        get_mailer(config.registry, manager).send(make_message())
    [name] = os.listdir(spool / "new")
    return (spool / "new" / name).read_bytes()


def strip_envelope(data):
    """The message of a spool file, without the X-Actually-* lines."""
    from pyramid_txmail.queue.maildir.spool import split_envelope

    return split_envelope(data)[2]
