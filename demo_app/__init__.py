"""A small Pyramid application that shows pyramid_txmail at work.

A sign-up form backed by a real database (SQLAlchemy on SQLite, joined to the
request's transaction by zope.sqlalchemy), pages rendered by jinja2, and a
welcome mail (text + HTML + inline logo) sent with ``request.mailer.send``:

* ``/``       the form; a committed sign-up queues the welcome mail, a duplicate
              address fails at the database flush *after* the send, the
              transaction aborts and no mail goes out (:mod:`demo_app.signup`)
* ``/thanks`` after a committed sign-up
* ``/inbox``  what the local development SMTP server received
              (:mod:`demo_app.inbox`, :mod:`demo_app.devsmtp`)
* ``/_mail/`` the same inbox through pyramid_txmail's preview page, when
              development.ini includes ``pyramid_txmail.preview``

``python -m demo_app.run`` (``make demo``) starts it all; see
:mod:`demo_app.run`.
"""
from __future__ import annotations

from pyramid.config import Configurator

from .inbox import inbox_entries

__all__ = ["main", "inbox_entries"]


def main(global_config, **settings):
    """The WSGI application (``use = call:demo_app:main``)."""
    # The mail preview page (pyramid_txmail.preview, in development.ini) lists the inbox.
    if settings.get("demo.inbox_path"):
        settings.setdefault("mail.preview_dirs", settings["demo.inbox_path"])
    with Configurator(settings=settings) as config:
        config.include("demo_app.models")  # request.dbsession, on request.tm
        config.include("pyramid_txmail")   # request.mailer, on request.tm
        config.include("pyramid_jinja2")
        config.add_static_view("static", "demo_app:static", cache_max_age=3600)
        config.add_route("home", "/")
        config.add_route("thanks", "/thanks")
        config.add_route("inbox", "/inbox")
        config.add_route("message", "/inbox/{name}")
        config.add_route("message_html", "/inbox/{name}/html")
        config.add_route("message_part", "/inbox/{name}/cid/{cid}")
        config.scan("demo_app.signup")
        config.scan("demo_app.inbox")
        return config.make_wsgi_app()
