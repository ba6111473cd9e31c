"""Direct delivery never holds a request longer than ``mail.direct_timeout`` (issue 11, finding 4).

Set-up of the finding: ``mail.delivery = direct``, a relay that does not
answer the final dot, waitress with 4 threads.  Every mail-sending request
waited ``mail.data_timeout`` (10 minutes) and a page sending no mail was not
served.  Here the relay (:class:`tests.test_daemon.GatedHandler`) holds its
reply until the test opens the gate -- long after every HTTP response has
arrived, so that a response at all proves the bound (no timing).  Then the
gate opens and every message is counted: delivered once, or in the fallback
queue; none lost, none twice.
"""
from __future__ import annotations

import collections
import threading
import urllib.request

import pytest
import waitress
from email.message import EmailMessage
from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_txmail import IMailFailed, IMailQueued, IMailSent
from pyramid_txmail.mailer.direct import MAX_SENDERS
from pyramid_txmail.queue.maildir.spool import Spool

from .reliability import record
from .test_daemon import GatedHandler, received, wait_until

HTTP_WAIT = 60  # generous: a response that comes at all is what counts


def send_view(request):
    ids = []
    for i in range(int(request.params.get("count", 1))):
        msg = EmailMessage()
        msg["To"] = "bob@example.com"
        msg["Subject"] = f"direct {i}"
        msg.set_content("hello\n")
        ids.append(request.mailer.send(msg))
    return Response("\n".join(ids))


def make_app(server, events, **extra):
    settings = {"mail.delivery": "direct", "mail.host": server.host,
                "mail.port": str(server.port), "mail.timeout": "2",
                "mail.default_sender": "sender@example.com", **extra}
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    config.add_route("send", "/send")
    config.add_view(send_view, route_name="send")
    config.add_route("ping", "/ping")
    config.add_view(lambda request: Response("pong"), route_name="ping")
    for iface in (IMailSent, IMailQueued, IMailFailed):
        config.add_subscriber(events.append, iface)
    return config.make_wsgi_app()


@pytest.fixture
def gated(make_smtp_server):
    server = make_smtp_server(handler=GatedHandler())
    yield server
    server.handler.gate.set()  # lets the sender threads still waiting finish


@pytest.fixture
def serve():
    """``serve(app)``: a real waitress server with 4 threads; its base URL."""
    servers = []

    def start(app):
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        servers.append(server)
        threading.Thread(target=server.run, daemon=True).start()
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    for server in servers:
        server.close()


def get(url):
    with urllib.request.urlopen(url, timeout=HTTP_WAIT) as response:
        return response.status, response.read().decode()


@pytest.mark.reliability
def test_a_hanging_relay_never_takes_the_site_down(tmp_path, gated, serve):
    events = []
    spool_path = tmp_path / "spool"
    base = serve(make_app(gated, events, **{"mail.direct_timeout": "2",
                                            "mail.queue_path": str(spool_path)}))
    requests = 3 * 4  # three rounds of the 4 waitress threads
    answers = [None] * requests

    def send(i):
        answers[i] = get(f"{base}/send")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    wait_until(lambda: gated.handler.arrived >= 1, what="a message at the hanging relay")
    assert get(f"{base}/ping") == (200, "pong")  # a page without mail is served
    for thread in threads:
        thread.join(3 * HTTP_WAIT)
    assert not gated.handler.gate.is_set()  # every response came while the relay hung
    assert all(a is not None and a[0] == 200 for a in answers), answers
    ids = [a[1] for a in answers]
    spool = Spool(str(spool_path))
    # at most MAX_SENDERS wait for the relay; the rest went to the fallback queue at once
    assert gated.handler.arrived == MAX_SENDERS
    assert len(spool.names("new")) == requests - MAX_SENDERS

    gated.handler.gate.set()  # the relay answers: the senders finish in the background
    wait_until(lambda: sum(IMailSent.providedBy(e) for e in events) == MAX_SENDERS,
               what="MailSent of the messages finished in the background")
    got = received(gated)
    delivered = {m for m, _ in got}
    assert all(n == 1 for n in got.values())
    queued = {e.message_id for e in events if IMailQueued.providedBy(e)}
    assert len(queued) == requests - MAX_SENDERS and not queued & delivered
    assert delivered | queued == set(ids)
    assert not any(IMailFailed.providedBy(e) for e in events)
    record("direct", "relay never answering the final dot, waitress with 4 threads, "
           f"{requests} mail requests and one without mail", messages=requests,
           delivered=len(delivered), held=len(queued),
           detail=f"every response arrived while the relay hung; {MAX_SENDERS} finished "
                  "in the background once it answered, the rest queued at once")


def test_messages_not_started_when_the_bound_passes_go_to_the_fallback_queue(
        tmp_path, gated, serve):
    events = []
    spool_path = tmp_path / "spool"
    base = serve(make_app(gated, events, **{"mail.direct_timeout": "1",
                                            "mail.queue_path": str(spool_path)}))
    status, text = get(f"{base}/send?count=3")
    assert status == 200 and not gated.handler.gate.is_set()
    first, *rest = text.split("\n")
    spool = Spool(str(spool_path))
    assert len(spool.names("new")) == 2 and gated.handler.arrived == 1
    queued = [e for e in events if IMailQueued.providedBy(e)]
    assert sorted(e.message_id for e in queued) == sorted(rest)
    assert "mail.direct_timeout" in queued[0].reason
    gated.handler.gate.set()
    wait_until(lambda: any(IMailSent.providedBy(e) for e in events), what="MailSent")
    assert received(gated) == collections.Counter({(first, "bob@example.com"): 1})


def test_without_a_fallback_the_outcome_is_reported_after_the_response(gated, serve):
    # the relay never answers: mail.data_timeout ends the wait, in the background
    events = []
    base = serve(make_app(gated, events, **{"mail.direct_timeout": "0.5",
                                            "mail.timeout": "1", "mail.data_timeout": "3"}))
    status, message_id = get(f"{base}/send")
    assert status == 200 and not gated.handler.gate.is_set()
    wait_until(lambda: any(IMailFailed.providedBy(e) for e in events), timeout=30,
               what="MailFailed after mail.data_timeout")
    [failed] = [e for e in events if IMailFailed.providedBy(e)]
    assert failed.message_id == message_id and failed.request is None
    assert "deliver it twice" in failed.reason  # RFC 1047: it may have arrived


EXITING_SCRIPT = '''
import logging, sys, transaction
from email.message import EmailMessage
from pyramid.config import Configurator
from pyramid_txmail import get_mailer
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
config = Configurator(settings={"mail.delivery": "direct", "mail.host": "127.0.0.1",
                                "mail.port": sys.argv[1], "mail.timeout": "5",
                                "mail.data_timeout": "300", "mail.direct_timeout": "1",
                                "mail.default_sender": "sender@example.com"})
config.include("pyramid_txmail")
config.commit()
manager = transaction.TransactionManager(explicit=True)
mailer = get_mailer(config.registry, manager)
msg = EmailMessage()
msg["To"], msg["Subject"] = "bob@example.com", "exit"
msg.set_content("hello\\n")
with manager:
    print("ID", mailer.send(msg), flush=True)
'''


def test_a_process_exiting_waits_a_bounded_time_and_names_what_it_abandons(gated, tmp_path):
    # probe 11b finding 2: non-daemon sender threads held the exit (and a
    # waitress stopped with SIGINT) for as long as the relay held them
    import subprocess
    import sys

    script = tmp_path / "send_and_exit.py"
    script.write_text(EXITING_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(gated.port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=HTTP_WAIT)  # the relay holds it for 60 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not gated.handler.gate.is_set() and gated.handler.arrived == 1
    message_id = out.split("ID ", 1)[1].strip()
    assert proc.returncode == 0, err
    assert "exiting with 1 direct deliveries unfinished" in err and message_id in err, err
