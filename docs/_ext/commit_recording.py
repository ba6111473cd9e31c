"""The commit timeline, recorded from a real Pyramid request while the docs are built.

:func:`record_spool_commit` builds a small Pyramid application -- pyramid_tm,
pyramid_txmail, a zope.sqlalchemy session on a SQLite file, a Maildir spool, all in a
temporary directory -- and sends it one request through its WSGI app (the router,
pyramid_tm's tween, response and finished callbacks).  Its view inserts an
application row and sends a mail with ``request.mailer.send()``.  Every
two-phase-commit call that the ``transaction`` package makes on the two data
managers is recorded (by wrapping their classes' methods for the duration), as are
the view's steps, the request's response callbacks, the ``MailQueued`` subscriber
and the moment the WSGI app hands the response back to the server; after each one,
what another process could see: which spool directory holds the message, and
whether the application's row is committed.  :func:`record_outbox_commit` does the
same with the SQL outbox, where the mail is a row in the same database transaction.

The picture is drawn from these steps only, so it shows the order the code really
follows in a request -- ``MailQueued`` included, which a request notifies from a
finished callback, after pyramid_tm's commit and the response callbacks and
before the response leaves the application.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from email.message import EmailMessage

#: The two-phase commit protocol's calls, in the order ``transaction`` makes them.
PROTOCOL = ("tpc_begin", "commit", "tpc_vote", "tpc_finish", "abort", "tpc_abort")
SPOOL_DIRS = ("tmp", "prepared", "new")


class Step:
    """One recorded moment: who was called, and what another process saw after it."""

    def __init__(self, actor, call, spool, row):
        self.actor, self.call, self.spool, self.row = actor, call, spool, row


#: The spool's steps inside our vote and finish: where the file is after each.
SPOOL_CALLS = {"write_tmp": "write_tmp: written, fsynced", "prepare": "prepare: renamed",
               "settle_prepared": "settle_prepared: prepared/ fsynced",
               "commit_prepared": "commit_prepared: renamed, new/ fsynced"}


@contextlib.contextmanager
def recording_calls(cls, actor, note, names=PROTOCOL):
    """Wrap ``cls``'s methods ``names`` so each call is ``note(actor, label)`` after it
    ran (``names`` maps a method to its label, or lists methods labelled by name)."""
    labels = names if isinstance(names, dict) else {name: name for name in names}
    saved = {name: cls.__dict__[name] for name in labels if name in cls.__dict__}

    def wrap(name, method):
        def recorded(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            note(actor, labels[name])
            return result
        return recorded

    for name, method in saved.items():
        setattr(cls, name, wrap(name, method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(cls, name, method)


def welcome():
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "ann@example.com"
    message["Subject"] = "Welcome"
    message.set_content("Thanks for signing up.\n")
    return message


def _record(settings_for, spool_of):
    """Run one transaction: a row and a mail; the steps seen."""
    steps = []
    quiet = logging.getLogger("pyramid_txmail")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its INFO lines are the build's noise, not the page's
    try:
        with tempfile.TemporaryDirectory(prefix="txmail-docs-") as here:
            _run(here, settings_for, spool_of, steps)
    finally:
        quiet.setLevel(level)
    return steps


def _run(here, settings_for, spool_of, steps):
    import sqlalchemy as sa
    import zope.sqlalchemy
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response
    from sqlalchemy.orm import sessionmaker
    from zope.sqlalchemy.datamanager import SessionDataManager

    from pyramid_txmail.interfaces import IMailQueued
    from pyramid_txmail.mailer.datamanager import MailDataManager
    from pyramid_txmail.queue.maildir.spool import Spool
    from pyramid_txmail.queue.sql import init_db, outbox

    url = "sqlite:///" + os.path.join(here, "app.sqlite")
    engine = sa.create_engine(url)
    users = sa.Table("users", sa.MetaData(), sa.Column("email", sa.String, primary_key=True))
    users.metadata.create_all(engine)
    init_db(engine)
    spool = spool_of(here)

    def seen():
        """What another process sees now: the spool's files, the committed rows."""
        where = [d + "/" for d in SPOOL_DIRS if spool and os.listdir(os.path.join(spool, d))]
        with engine.connect() as other:
            row = other.execute(sa.select(users.c.email)).first() is not None
            mail = other.execute(sa.select(outbox.c.state)).scalar()
        if mail:
            where.append(f"outbox row: {mail}")
        return where, row

    def note(actor, call):
        if call == "abort" and any(s.call == "tpc_finish" for s in steps):
            # transaction calls abort() on each data manager once the after-commit
            # hooks have run: a clean-up, nothing is undone.
            call = "abort (clean-up after the commit)"
        steps.append(Step(actor, call, *seen()))

    config = Configurator(settings=settings_for(here, url))
    config.include("pyramid_tm")
    config.include("pyramid_txmail")
    config.add_subscriber(lambda event: note("subscriber", "MailQueued event"), IMailQueued)
    sessions = sessionmaker(bind=engine)

    def dbsession(request):  # the usual cookiecutter's request.dbsession
        session = sessions()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        request.add_finished_callback(lambda request: session.close())
        return session

    def signup(request):
        request.dbsession.execute(users.insert().values(email="ann@example.com"))
        zope.sqlalchemy.mark_changed(request.dbsession)  # raw SQL: say the session wrote
        note("view", "INSERT the application's row")
        request.mailer.send(welcome())
        note("view", "request.mailer.send(message)")
        request.add_response_callback(
            lambda request, response: note("the request (Pyramid)", "response callback"))
        note("view", "the view returns")
        return Response("Welcome!")

    config.add_request_method(dbsession, reify=True)
    config.add_route("signup", "/signup")
    config.add_view(signup, route_name="signup", request_method="POST")
    app = config.make_wsgi_app()

    def server(environ, start_response):
        body = app(environ, start_response)
        note("the request (Pyramid)", "the response goes back to the server")
        return body

    import transaction

    # pyramid_tm begins the request's transaction on the thread's manager, which
    # aborts one left open there (by the process that builds the docs -- a test
    # suite, say): its data managers' abort would be recorded as this request's.
    transaction.manager.abort()
    with recording_calls(MailDataManager, "pyramid_txmail", note), \
            recording_calls(Spool, "the spool", note, SPOOL_CALLS), \
            recording_calls(SessionDataManager, "database (zope.sqlalchemy)", note):
        response = Request.blank("/signup", method="POST").get_response(server)
    if response.status_code != 200:
        raise RuntimeError(f"the recorded request failed: {response.status}\n{response.text}")
    engine.dispose()


def record_spool_commit():
    """The steps of a commit with ``mail.queue_path`` (the Maildir spool)."""
    return _record(lambda here, url: {"mail.queue_path": os.path.join(here, "spool"),
                                       "mail.delivery": "queue"},
                   lambda here: os.path.join(here, "spool"))


def record_outbox_commit():
    """The steps of a commit with ``mail.queue_url`` (the SQL outbox, in the app's database)."""
    return _record(lambda here, url: {"mail.queue_url": url, "mail.delivery": "queue"},
                   lambda here: None)


#: A colour per participant, for the "who" column (the others: none).
ACTOR_COLOURS = {"view": "#fff2cc", "pyramid_txmail": "#cfe2f3", "the spool": "#cfe2f3",
                 "database (zope.sqlalchemy)": "#d9d2e9", "the request (Pyramid)": "#fce5cd",
                 "subscriber": "#d9ead3"}


def _cell(text, header=False, colour=None):
    from html import escape

    inner = "<BR/>".join(escape(line) for line in text.split("\n"))  # a header: two lines
    inner = f"<B>{inner}</B>" if header else inner
    background = f' BGCOLOR="{colour}"' if colour else ""
    return f'<TD ALIGN="LEFT"{background}>{inner or " "}</TD>'


def timeline_dot(steps, name):
    """A table drawn by graphviz: one row per recorded step -- who was called, the
    call, what another process saw after it.  Five columns, not one per participant:
    narrow enough to be read at its natural size on a page."""
    header = "".join(_cell(h, header=True) for h in
                     ("#", "who", "call", "mail, as another\nprocess sees it",
                      "application's\nrow"))
    rows = [f"<TR>{header}</TR>"]
    for number, step in enumerate(steps, 1):
        mail = ", ".join(step.spool) or "nothing yet"
        rows.append("<TR>" + _cell(str(number)) +
                    _cell(step.actor, colour=ACTOR_COLOURS.get(step.actor)) +
                    _cell(step.call) + _cell(mail) +
                    _cell("committed" if step.row else "not committed",
                          colour="#d9ead3" if step.row else None) + "</TR>")
    table = ('<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
             + "".join(rows) + "</TABLE>")
    return (f"digraph {name}_timeline {{\n"
            '  node [shape=plaintext, fontname="sans-serif", fontsize=12];\n'
            f"  steps [label=<{table}>];\n}}")
