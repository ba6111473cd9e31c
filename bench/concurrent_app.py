"""The apps of the ``concurrent`` section: one Pyramid view under waitress, 8 threads.

    python bench/concurrent_app.py KIND SPOOL PORT [TEMPLATE]

Every app is the same Pyramid app with pyramid_tm (a request is a
transaction, as in a real application) and one view at ``/``; only what the
view does differs (``KIND``):

``nothing``
    returns ``ok``: the cost of Pyramid, pyramid_tm, waitress and ab.
``floor``
    what durability needs and nothing else: create with ``O_EXCL`` in
    ``SPOOL/tmp``, write the bytes of a spool file our path wrote
    (``TEMPLATE``), fsync, rename into ``SPOOL/new``, fsync ``new/``.
``pyramid_mailer``
    ``request.mailer.send_to_queue(Message(...))`` (pyramid_mailer's
    include; repoze.sendmail's Maildir, no fsync at all).
``txmail``
    ``request.mailer.send(EmailMessage)`` with ``mail.queue_path = SPOOL``
    (pyramid_txmail's durable queued delivery).
``txmail-mail``
    the same durable path, the same mail built with
    ``pyramid_txmail.builder.Mail(subject=..., sender=..., to=..., text=BODY)``
    instead of a stdlib ``EmailMessage`` (whose header registry and
    ``set_content`` are most of the view's own CPU): what a view pays with
    the package's own builder.  On disk the two differ only in header order
    (``MIME-Version`` before ``Content-Type``) and the Message-ID and Date.
``txmail-serial``
    the same as ``txmail``, but every finish fsyncs ``new/`` by itself, as before the group
    commit (:func:`_serial_flushes`): the old code, run beside the new one.

The message is ~2 KB of plain text with one recipient, built in the view
(composing it is part of what a request pays).  waitress serves with 8
threads on 127.0.0.1:PORT; the process runs until it is terminated.

``GET /fsyncs`` answers ``FILES DIRECTORIES``: how many fsyncs of regular
files and of directories the process has made (``os.fsync`` is wrapped
around the real call, for every app alike), so the section can say how many
directory flushes a request cost.
"""
from __future__ import annotations

import email.message
import itertools
import logging
import os
import sys

SENDER = "Benchmark Sender <sender@example.com>"
RECIPIENT = "rcpt@example.net"
PARAGRAPH = ("Thank you for your order. The parcel left our warehouse today and "
             "should reach you within two to three working days. You can follow "
             "it with the tracking link below; the carrier updates it every few "
             "hours.\n\n")
BODY = "Hello,\n\n" + PARAGRAPH * 7 + "Kind regards,\nThe Shop\n"
KINDS = ("nothing", "floor", "pyramid_mailer", "txmail", "txmail-mail", "txmail-serial")
THREADS = 8

_numbers = itertools.count()


def _subject():
    return f"Your order #{100000 + next(_numbers)} has shipped"


def _nothing(request):
    return request.response


def _floor_view(spool, template):
    tmp, new = os.path.join(spool, "tmp"), os.path.join(spool, "new")
    for directory in (spool, tmp, new):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def view(request):
        name = f"{os.getpid()}.{next(_numbers)}.bench"
        fd = os.open(os.path.join(tmp, name), flags, 0o600)
        try:
            os.write(fd, template)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(os.path.join(tmp, name), os.path.join(new, name))
        dfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return request.response
    return view


def _pyramid_mailer_view(request):
    from pyramid_mailer.message import Message

    request.mailer.send_to_queue(Message(subject=_subject(), sender=SENDER,
                                         recipients=[RECIPIENT], body=BODY))
    return request.response


def _txmail_view(request):
    msg = email.message.EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = _subject()
    msg.set_content(BODY)
    request.mailer.send(msg)
    return request.response


def _txmail_mail_view(request):
    from pyramid_txmail.builder import Mail

    request.mailer.send(Mail(subject=_subject(), sender=SENDER, to=RECIPIENT, text=BODY))
    return request.response


def _serial_flushes():
    """The spool as it was before the group commit: each finish fsyncs ``new/`` alone."""
    from pyramid_txmail.queue.maildir import spool as spool_module

    spool_module.flush_dir = spool_module.fsync_dir


_fsyncs = {"file": 0, "dir": 0}


def _count_fsyncs():
    """Wrap ``os.fsync``: count regular-file and directory fsyncs (the real call runs)."""
    import stat
    import threading

    real, lock = os.fsync, threading.Lock()

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        with lock:
            _fsyncs[kind] += 1
        return real(fd)

    os.fsync = fsync


def _fsyncs_view(request):
    request.response.text = f"{_fsyncs['file']} {_fsyncs['dir']}"
    return request.response


def make_app(kind, spool, template=b""):
    from pyramid.config import Configurator

    # pyramid_tm's default manager (thread-local): repoze.sendmail joins
    # ``transaction.get()``, so an explicit manager would never commit its mail.
    settings = {}
    txmail = kind in ("txmail", "txmail-mail", "txmail-serial")
    if txmail or kind == "pyramid_mailer":
        settings["mail.queue_path"] = spool
    if txmail:
        settings["mail.delivery"] = "queue"
    config = Configurator(settings=settings)
    config.include("pyramid_tm")
    if txmail:
        config.include("pyramid_txmail")
        if kind == "txmail-serial":
            _serial_flushes()
        view = _txmail_mail_view if kind == "txmail-mail" else _txmail_view
    elif kind == "pyramid_mailer":
        config.include("pyramid_mailer")
        view = _pyramid_mailer_view
    elif kind == "floor":
        view = _floor_view(spool, template)
    else:
        view = _nothing
    config.add_route("send", "/")
    config.add_view(view, route_name="send")
    config.add_route("fsyncs", "/fsyncs")
    config.add_view(_fsyncs_view, route_name="fsyncs")
    _count_fsyncs()
    return config.make_wsgi_app()


def main(argv):
    import waitress

    kind, spool, port = argv[0], argv[1], int(argv[2])
    if kind not in KINDS:
        sys.exit(f"concurrent_app.py: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    template = open(argv[3], "rb").read() if len(argv) > 3 else b""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth"
    app = make_app(kind, spool, template)
    waitress.serve(app, host="127.0.0.1", port=port, threads=THREADS, _quiet=True,
                   backlog=1024)


if __name__ == "__main__":
    main(sys.argv[1:])
