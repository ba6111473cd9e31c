"""The watchers and the daemon's timers, in-process, on real directories and pipes."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from pyramid_txmail.processor.daemon import MIN_TIMER_WAIT, Daemon, Signals
from pyramid_txmail.processor.processor import PassStats
from pyramid_txmail.settings import MailSettings
from pyramid_txmail.queue.maildir.spool import Spool
from pyramid_txmail.queue.maildir import watch
from pyramid_txmail.queue.maildir.watch import (InotifyWatcher, PollWatcher, Waker, WatchLost,
                                  filesystem_type, make_watcher)


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


@pytest.fixture
def waker():
    waker = Waker()
    yield waker
    waker.close()


def deliver_file(spool, name):
    """Maildir style: write in tmp/, rename into new/."""
    path = os.path.join(spool.path, "tmp", name)
    with open(path, "w") as f:
        f.write("x")
    os.rename(path, os.path.join(spool.path, "new", name))


WATCHERS = {
    "poll": lambda directory: PollWatcher(directory, 0.05),
    "inotify": InotifyWatcher,
}


@pytest.fixture(params=sorted(WATCHERS))
def watcher(request, spool):
    made = WATCHERS[request.param](os.path.join(spool.path, "new"))
    yield made
    made.close()


def test_a_file_arriving_after_mark_ends_the_wait(spool, watcher, waker):
    watcher.mark()
    threading.Timer(0.2, deliver_file, (spool, "1.M1P1.host")).start()
    assert watcher.wait(30, waker) == "mail"


def test_a_file_that_arrived_during_the_pass_ends_the_next_wait_at_once(
        spool, watcher, waker):
    watcher.mark()
    deliver_file(spool, "1.M1P1.host")  # between mark and wait: during a pass
    assert watcher.wait(30, waker) == "mail"


def test_files_there_at_mark_do_not_end_the_wait(spool, watcher, waker):
    deliver_file(spool, "1.M1P1.host")  # e.g. one the pass could not claim
    watcher.mark()
    assert watcher.wait(0.3, waker) == "timeout"


def test_dotfiles_do_not_count_as_mail_for_polling(spool, waker):
    watcher = PollWatcher(os.path.join(spool.path, "new"), 0.05)
    watcher.mark()
    open(os.path.join(spool.path, "new", ".sending-x"), "w").close()
    assert watcher.wait(0.3, waker) == "timeout"


def test_the_waker_ends_the_wait(watcher, waker):
    watcher.mark()
    threading.Timer(0.2, waker.wake).start()
    assert watcher.wait(30, waker) == "woken"
    assert not waker.wait(0)  # the poke was consumed


def test_inotify_reports_a_removed_directory(tmp_path):
    directory = tmp_path / "new"
    directory.mkdir()
    watcher = InotifyWatcher(str(directory))
    directory.rmdir()
    with pytest.raises(WatchLost, match="removed or moved"):
        watcher.mark()
    watcher.close()


def test_make_watcher_modes(spool):
    directory = os.path.join(spool.path, "new")
    assert isinstance(make_watcher("poll", directory, 1.0), PollWatcher)
    auto = make_watcher("auto", directory, 1.0)
    assert isinstance(auto, InotifyWatcher)  # Linux
    auto.close()
    with pytest.raises(ValueError, match="sometimes"):
        make_watcher("sometimes", directory, 1.0)


def make_daemon(spool, run_pass=None, clock=time.time, **settings):
    waker = Waker()
    signals = Signals(waker)
    watcher = PollWatcher(os.path.join(spool.path, "new"), 0.05)
    daemon = Daemon(spool, MailSettings(queue_path=spool.path, **settings),
                    run_pass or (lambda stop: PassStats()), watcher, signals, waker,
                    rescan=60.0, clock=clock)
    return daemon


def park(spool, state, name, meta=None, mtime=None):
    path = os.path.join(spool.path, state, name)
    with open(path, "w") as f:
        f.write("x")
    if meta is not None:
        spool.write_meta(name, meta)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_next_wake_is_the_rescan_when_nothing_waits(spool):
    assert make_daemon(spool, clock=lambda: 1000.0).next_wake_in() == pytest.approx(60.0)


def test_next_wake_is_the_earliest_deferred_retry(spool):
    now = time.time()
    park(spool, "deferred", "1.M1P1.a", {"next_attempt": now + 30})
    park(spool, "deferred", "1.M1P1.b", {"next_attempt": now + 7})
    wake = make_daemon(spool, clock=lambda: now).next_wake_in()
    assert 7 <= wake < 8


def test_next_wake_is_when_a_claim_turns_stale(spool):
    now = time.time()
    park(spool, "cur", "1.M1P1.a", mtime=now - 100)
    wake = make_daemon(spool, clock=lambda: now, claim_timeout=120.0).next_wake_in()
    assert 20 <= wake < 21


def test_a_due_retry_never_makes_the_daemon_spin(spool):
    now = time.time()
    park(spool, "deferred", "1.M1P1.a", {"next_attempt": now - 5})
    park(spool, "deferred", "1.M1P1.b", {})  # unknown time: due
    park(spool, "cur", "1.M1P1.c", mtime=now - 10_000)
    assert make_daemon(spool, clock=lambda: now).next_wake_in() == MIN_TIMER_WAIT


def test_a_pass_that_raises_is_logged_and_retried_after_a_pause(spool, caplog):
    calls = []

    def run_pass(stop):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("disk on fire")
        stop.set()
        return PassStats(sent=1)

    daemon = make_daemon(spool, run_pass)
    with caplog.at_level(logging.INFO, "pyramid_txmail"):
        totals = daemon.run()
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.9  # it waited, it did not spin
    assert totals.sent == 1 and daemon.passes == 2
    assert "failed; next try in 1s" in caplog.text and "disk on fire" in caplog.text
    daemon.waker.close()


MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:50 / /srv rw,relatime - ext4 /dev/sdb1 rw
41 40 0:51 / /srv/mail\040spool rw,relatime shared:1 - nfs4 nas:/export/spool rw,vers=4.2
"""


def test_filesystem_type_from_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type("/srv/mail spool/new", str(info)) == "nfs4"
    assert filesystem_type("/srv/mail spoolx", str(info)) == "ext4"
    assert filesystem_type("/etc", str(info)) == "ext4"
    assert filesystem_type("/etc", str(tmp_path / "missing")) is None


def test_auto_polls_a_spool_on_nfs(spool, monkeypatch, caplog):
    monkeypatch.setattr(watch, "filesystem_type", lambda path: "nfs4")
    directory = os.path.join(spool.path, "new")
    with caplog.at_level(logging.INFO, "pyramid_txmail"):
        assert isinstance(make_watcher("auto", directory, 2.0), PollWatcher)
    assert "is on nfs4" in caplog.text
    inotify = make_watcher("inotify", directory, 2.0)  # asked for: honoured
    assert isinstance(inotify, InotifyWatcher)
    inotify.close()


def _woken_until(waker, event):
    """Wait on the waker until ``event`` is set: a signal the kernel gave another
    thread of this process (a test's timer) is handed on by a Python handler
    in this thread, which the waker wakes to run it; then the signal thread
    sets the event and wakes it again."""
    for _ in range(30):
        if event.is_set():
            return True
        waker.wait(1)
    return event.is_set()


def test_signals_only_set_flags_and_poke_the_waker(waker):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    with Signals(waker) as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        assert _woken_until(waker, signals.hup) and not signals.stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert _woken_until(waker, signals.stop)
        assert signals.first_stop_name() == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_signals_outside_the_main_thread_install_nothing(waker):
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def use():
        with Signals(waker) as signals:
            seen.append(signal.getsignal(signal.SIGTERM))
            signals.stop.set()

    thread = threading.Thread(target=use)
    thread.start()
    thread.join(10)
    assert seen == [before]


def test_a_lost_watch_falls_back_to_polling(tmp_path, caplog):
    spool = Spool(str(tmp_path / "spool"))
    passes = []
    daemon = make_daemon(spool, poll_interval=0.05)
    daemon.watcher.close()
    daemon.watcher = InotifyWatcher(os.path.join(spool.path, "new"))

    def run_pass(stop):
        passes.append(type(daemon.watcher).__name__)
        if len(passes) == 1:  # the spool's new/ is replaced under the daemon
            os.rename(os.path.join(spool.path, "new"), os.path.join(spool.path, "old"))
            os.mkdir(os.path.join(spool.path, "new"))
        else:
            stop.set()
        return PassStats()

    daemon.run_pass = run_pass
    threading.Timer(0.5, deliver_file, (spool, "1.M1P1.host")).start()
    with caplog.at_level(logging.INFO, "pyramid_txmail"):
        daemon.run()
    assert passes == ["InotifyWatcher", "PollWatcher"]
    assert "removed or moved" in caplog.text and "polling every 0.05s instead" in caplog.text
    daemon.waker.close()


def test_without_inotify_auto_polls_and_inotify_is_an_error(spool, monkeypatch, caplog):
    def unavailable():
        raise watch.WatchUnavailable("inotify is Linux-only (this is plan9)")

    monkeypatch.setattr(watch, "_libc", unavailable)
    directory = os.path.join(spool.path, "new")
    with caplog.at_level(logging.WARNING, "pyramid_txmail"):
        assert isinstance(make_watcher("auto", directory, 1.0), PollWatcher)
    assert "inotify unavailable (inotify is Linux-only (this is plan9)); polling" in caplog.text
    with pytest.raises(watch.WatchUnavailable, match="plan9"):
        make_watcher("inotify", directory, 1.0)
