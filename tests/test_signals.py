"""``pyramid_txmail.processor.daemon.Signals`` in this process: no Python code runs in a signal handler.

The storms against a real daemon are in tests/test_signal_storm.py; these are
the deterministic cases behind them.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest

from pyramid_txmail.processor.daemon import Signals
from pyramid_txmail.queue.maildir.watch import Waker


def until(condition, waker, turns=30):
    """Wait on the waker (one second at a time) until ``condition()``.

    Not ``Event.wait``: a signal the kernel gives another thread of this
    process (one started before Signals, such as a test's timer) is handed
    on by a Python handler, which runs in the main thread only once it runs
    Python code again -- the waker wakes it; a wait on a lock would not.
    """
    for _ in range(turns):
        if condition():
            return True
        waker.wait(1)
    return condition()


@pytest.fixture
def waker():
    w = Waker()
    yield w
    w.close()


def test_a_signal_while_this_thread_holds_the_stop_events_lock_does_not_deadlock(waker):
    # The old handler called stop.set() in the main thread, between two
    # bytecodes of whatever it was doing: here, holding the very lock
    # Event.set() takes, which never comes free again (the pytest timeout ends it).
    with Signals(waker) as signals:
        with signals.stop._cond:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecodes, at each of which a handler could run
                pass
        assert until(signals.stop.is_set, waker)
        assert signals.first_stop_name() == "SIGTERM"


def test_a_thread_started_before_does_not_block_them_and_hands_them_on(waker):
    # A thread started before Signals did not inherit the mask: the kernel may
    # hand it a process-directed signal.  It must reach the signal thread, not
    # kill the process with the default action.
    ready, done = threading.Event(), threading.Event()

    def older():
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=older)
    thread.start()
    ready.wait(10)
    try:
        with Signals(waker) as signals:
            signal.pthread_kill(thread.ident, signal.SIGHUP)
            assert until(signals.hup.is_set, waker) and not signals.stop.is_set()
            signal.pthread_kill(thread.ident, signal.SIGINT)
            assert until(signals.stop.is_set, waker)
            assert signals.first_stop_name() == "SIGINT"
    finally:
        done.set()
        thread.join(30)


def test_on_exit_the_mask_and_the_handlers_are_put_back(waker):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with Signals(waker) as signals:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= blocked
        thread = signals._thread
    assert not thread.is_alive()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_one_pass_mode_leaves_sighup_alone(waker):
    before = signal.getsignal(signal.SIGHUP)
    with Signals(handle_hup=False):
        assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.getsignal(signal.SIGHUP) == before


def test_many_signals_are_counted_and_the_first_is_named(waker):
    with Signals(waker) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert until(signals.stop.is_set, waker)
        os.kill(os.getpid(), signal.SIGTERM)
        assert until(lambda: signals.stops_received == 2, waker)
    assert signals.first_stop_name() == "SIGINT" and signals.stops_received == 2
