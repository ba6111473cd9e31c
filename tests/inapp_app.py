"""The web app of tests/test_inapp.py: ``mail.processor = thread`` under real servers.

Views:

``/send?n=N&tag=T``
    sends N messages through ``request.mailer`` in the request's transaction.
``/threads``
    this process's pid and thread names (does it run ``txmail-processor``?).
``/hold``
    writes ``<gate_dir>/held-PID``, then blocks until the file ``<gate_dir>/open``
    exists: keeps one gunicorn sync
    worker busy, so that the next request goes to the other one.

Subscribers write ``MailSent <message-id> <pid>`` to ``events_file`` (the
events go through the app's registry).  ``log_file`` gets pyramid_txmail's
INFO lines, each with its pid.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_txmail import Mail
from pyramid_txmail.interfaces import IMailSent

SENDER = "app@example.org"


def _send(request):
    count = int(request.params.get("n", "1"))
    tag = request.params.get("tag", "m")
    ids = []
    for i in range(count):
        ids.append(request.mailer.send(Mail(subject=f"{tag} {i}", to=[f"{tag}-{i}@example.net"],
                                            text=f"{tag} {i}\n")))
    return Response(json=ids)


def _threads(request):
    names = sorted(thread.name for thread in threading.enumerate())
    return Response(json={"pid": os.getpid(), "threads": names})


def _hold(request):
    gate_dir = request.registry.settings["gate_dir"]
    gate = os.path.join(gate_dir, "open")
    with open(os.path.join(gate_dir, f"held-{os.getpid()}"), "w"):
        pass  # the test now knows this worker is busy
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return Response(json=os.getpid())


def _log_to(path):
    logger = logging.getLogger("pyramid_txmail")
    if not any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(process)d %(threadName)s %(levelname)s "
                                               "%(name)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(global_config, **settings):
    return _configure(settings).make_wsgi_app()


def sql_main(global_config, **settings):
    """The same app on the SQL outbox (``mail.queue_url``): ``request.dbsession`` on
    ``request.tm``, as Pyramid's cookiecutter makes it; the tables exist already."""
    import sqlalchemy as sa
    import zope.sqlalchemy
    from sqlalchemy.orm import sessionmaker

    settings.setdefault("tm.manager_hook", "pyramid_tm.explicit_manager")
    config = _configure(settings)
    factory = sessionmaker(bind=sa.create_engine(settings["mail.queue_url"]))

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, reify=True)
    return config.make_wsgi_app()


def _configure(settings):
    _log_to(settings["log_file"])
    events = settings["events_file"]

    def record(event):
        with open(events, "a") as f:
            f.write(f"MailSent {event.message_id} {os.getpid()}\n")

    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    config.add_subscriber(record, IMailSent)
    for name, view in (("send", _send), ("threads", _threads), ("hold", _hold)):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name)
    return config
