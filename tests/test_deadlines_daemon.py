"""txmail-qp --daemon stops on SIGTERM whatever the relay or sendmail does (probe 11b, 1 and 2).

The probe's set-ups, as real subprocesses: a relay that sends a
continuation line every 0.2 s after the final dot, and a sendmail wrapper
whose child hangs with stdin open while a 234 KB message is piped to it.
Before, the worker never returned and SIGTERM was ignored.  Now the send
ends at its deadline, the message is deferred (temporary), and SIGTERM
ends the daemon; the waits are generous, nothing is timed.
"""
from __future__ import annotations


import transaction

from pyramid_txmail import Mail, get_mailer


from .test_daemon import Setup, WAIT, log_of, wait_until
from .test_deadlines_sendmail import gone, hanging_wrapper
from .trickleserver import TrickleServer


def _deferred(setup):
    return len(setup.spool.names("deferred"))


def test_daemon_with_a_relay_that_never_finishes_the_final_reply_stops(tmp_path):
    server = TrickleServer("dot")
    s = Setup(tmp_path, server, "mail.timeout = 1\nmail.data_timeout = 2\n")
    try:
        s.ini.write_text(s.ini.read_text().replace("mail.timeout = 60\n", ""))
        s.queue()
        proc = s.start("--workers", "1")
        assert server.trickling.wait(WAIT), log_of(proc)
        wait_until(lambda: _deferred(s) == 1, 60, "the message deferred at data_timeout")
        assert s.stop(proc) == 0, log_of(proc)
        assert "deliver it twice" in log_of(proc)
    finally:
        s.close()
        server.stop()


def test_daemon_with_a_hanging_sendmail_child_stops(tmp_path, smtp_server):
    app, pidfile = hanging_wrapper(tmp_path)
    s = Setup(tmp_path, smtp_server, f"mail.delivery = sendmail\nmail.sendmail_app = {app}\n"
                                     "mail.data_timeout = 2\nmail.timeout = 1\n")
    try:
        s.ini.write_text(s.ini.read_text().replace("mail.timeout = 60\n", ""))
        manager = transaction.TransactionManager(explicit=True)
        with manager:
            get_mailer(s.registry, manager).send(Mail(
                to="bob@example.org", subject="big", text=("y" * 76 + "\n") * 3000))
        proc = s.start("--workers", "1")
        wait_until(lambda: _deferred(s) == 1, 60, "the message deferred at data_timeout")
        assert s.stop(proc) == 0, log_of(proc)
        assert "killed with its process group" in log_of(proc)
        wait_until(lambda: gone(int(pidfile.read_text())), what="the hanging child killed")
    finally:
        s.close()
