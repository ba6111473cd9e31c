"""What the Postfix relay tests send, and how they count what arrived.

Shared by tests/test_postfix.py and tests/test_postfix_refusals.py: a WebTest app whose
views queue mail through ``request.mailer`` (four kinds of message, one of them with a
1.5 MiB attachment now and then), the real ``txmail-qp`` run on an ini, and readers for
what the sink received and what the spool still holds.
"""
from __future__ import annotations

import collections
import email
import email.policy
import os
import random
import re
import subprocess
import sys
import time
from email.message import EmailMessage

import webtest
from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_txmail import Mail
from pyramid_txmail.queue.maildir.spool import Spool, split_envelope

from .postfix import wait_until

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
SENDER = "Shop <shop@example.com>"
BIG = 1536 * 1024  # every 50th message has an attachment this big (txmail-qp streams it)


def build(i):
    """Message ``i`` of a run: four kinds in turn; every 50th has a 1.5 MiB attachment."""
    rng = random.Random(i)
    kind = i % 4
    if i % 50 == 0:
        mail = Mail(subject=f"Big report {i}", to=[f"big{i}@example.org"],
                    cc=[f"archive{i}@example.net"], text="The report is attached.\n")
        mail.attach(rng.randbytes(BIG), filename=f"report-{i}.bin")
        return mail
    if kind == 0:
        return Mail(subject=f"Plain {i}", to=[f"alice{i}@example.org", f"bob{i}@example.net"],
                    cc=f"carol{i}@example.com", bcc=f"audit{i}@example.org",
                    text=f"Hello number {i}.\n" + "A line of text.\n" * rng.randint(1, 40))
    if kind == 1:
        return Mail(subject=f"Grüße aus Köln – Bestellung №{i} ✓",
                    to=[f"Jörg Müller <jorg{i}@example.org>",
                        f"Zoë Ørsted <zoe{i}@example.net>"],
                    text=f"Grüß Gott, Jörg!\nIhre Bestellung №{i} kostet 12,50 €.\n"
                         "日本語のテキストも。\n",
                    html=f"<p>Grüß Gott, <b>Jörg</b> – №{i} ✓</p>")
    if kind == 2:
        mail = Mail(subject=f"Invoice {i}", to=[f"Åsa <asa{i}@example.org>"],
                    cc=[f"books{i}@example.com"], text="Your invoice is attached.\n")
        mail.attach(rng.randbytes(rng.randint(1, 40_000)), filename=f"Rechnung März {i}.pdf")
        mail.attach(f"id;amount\n{i};12.50\n".encode(), filename="lines.csv")
        return mail
    # An internationalised mailbox: SMTPUTF8 from txmail-qp to Postfix and on to the sink.
    return Mail(subject=f"Ünïcödé mailbox {i}",
                to=[f"jörg{i}@example.org", f"plain{i}@example.com"],
                text=f"To a UTF-8 mailbox, message {i}.\n")


def send_view(request):
    first, count = int(request.params["first"]), int(request.params["count"])
    ids = [request.mailer.send(build(i)) for i in range(first, first + count)]
    return Response("\n".join(ids))


def to_view(request):
    """One short message to the comma-separated ``to`` addresses."""
    msg = EmailMessage()
    msg["To"] = request.params["to"]
    msg["Subject"] = request.params.get("subject", "hello")
    msg.set_content("A short message.\n")
    return Response(request.mailer.send(msg))


def make_app(spool_path, **settings):
    config = Configurator(settings={"mail.queue_path": spool_path,
                                    "mail.default_sender": SENDER, **settings})
    config.include("pyramid_txmail")
    config.add_route("send", "/send")
    config.add_view(send_view, route_name="send")
    config.add_route("to", "/to")
    config.add_view(to_view, route_name="to")
    return webtest.TestApp(config.make_wsgi_app())


def queue_messages(spool_path, total, batch=5):
    """Send ``total`` messages through request.mailer, ``batch`` per request; returns
    {Message-ID: (envelope sender, recipients, stored bytes)} read back from new/."""
    app = make_app(spool_path)
    for first in range(0, total, batch):
        app.get("/send", {"first": first, "count": min(batch, total - first)})
    spool = Spool(spool_path)
    queued = {}
    for name in spool.names("new"):
        with open(os.path.join(spool.path, "new", name), "rb") as f:
            fromaddr, toaddrs, data = split_envelope(f.read())
        msg = email.message_from_bytes(data, policy=email.policy.default)
        queued[msg["Message-ID"]] = (fromaddr, toaddrs, data)
    assert len(queued) == total
    return queued


def write_ini(tmp_path, spool_path, port, extra=""):
    ini = tmp_path / "qp.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool_path}\n"
                   f"mail.host = 127.0.0.1\nmail.port = {port}\nmail.timeout = 20\n{extra}")
    return str(ini)


def run_qp(ini, *args):
    started = time.monotonic()
    done = subprocess.run([QP, ini, "--no-app", *args], capture_output=True, text=True,
                          timeout=120)
    done.seconds = time.monotonic() - started  # reported, never asserted
    assert done.returncode == 0, done.stderr
    return done


def by_message(received):
    """{Message-ID: [(envelope sender, recipients, bytes), ...]}: what the sink got."""
    found = collections.defaultdict(list)
    for got in received:
        msg = email.message_from_bytes(got.data, policy=email.policy.default)
        found[msg["Message-ID"]].append((got.mail_from, list(got.rcpt_tos), got.data))
    return found


def arrivals(received):
    """{(Message-ID, recipient): copies}."""
    count = collections.Counter()
    for mid, copies in by_message(received).items():
        for _, rcpts, _ in copies:
            count.update((mid, r) for r in rcpts)
    return count


def pairs(queued):
    """{(Message-ID, recipient)} of what :func:`queue_messages` queued."""
    return {(mid, r) for mid, (_, toaddrs, _) in queued.items() for r in toaddrs}


def wait_for_all(sink, relay, queued, also=lambda: True, settle=0.0):
    """Wait until every (message, recipient) queued has arrived and Postfix holds
    nothing more, then ``settle`` seconds for a stray late copy; what arrived."""
    expected = pairs(queued)
    wait_until(lambda: set(arrivals(sink.messages)) >= expected and relay.queued() == 0
               and also(), 60)
    time.sleep(settle)
    return arrivals(sink.messages)


RECEIVED = re.compile(rb"\AReceived: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


def without_relay_trace(data):
    """The delivered bytes minus the Received: field Postfix put on top, LF line ends."""
    stripped, n = RECEIVED.subn(b"", data, count=1)
    assert n == 1, data[:500]
    return stripped.replace(b"\r\n", b"\n")


def parsed(data):
    """What a reader sees: the headers (but Received) and every part's type, name, content."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    headers = [(k, str(v)) for k, v in msg.items() if k.lower() != "received"]
    parts = [(p.get_content_type(), p.get_filename(), _content(p)) for p in msg.walk()]
    return headers, parts


def _content(part):
    if part.get_content_maintype() == "multipart":
        return None
    content = part.get_content()  # text keeps the line ends it came with (CRLF off the wire)
    return content.replace("\r\n", "\n") if isinstance(content, str) else content


def held_in_spool(spool_path):
    spool = Spool(spool_path)
    return {state: spool.count(state) for state in ("new", "cur", "deferred", "failed")}
