"""Drive pluserable's own mail path in a real Pyramid app:
``drive_pluserable.py ROOT INCLUDE KEY=VALUE...``.

Run by tests/test_migration_pluserable.py in the migration venv, with pluserable and
its test models imported from ROOT (the unpacked sdist, switched or not).  The app is
the one pluserable's functional tests build (tests/slow/__init__.py: its routes,
policies, session factory, kerno utilities from tests/test.ini), with the mailer that
pluserable's README tells an app to include, INCLUDE (``pyramid_mailer`` before the
switch, ``pyramid_txmail`` after), configured by the KEY=VALUE mail settings.

A visitor then signs up through the real /register form (pluserable sends the
activation email) and asks for a password reset through /forgot_password (it sends the
reset email); both are sent with ``get_mailer(request).send(message)`` inside the
request's transaction, as in production.  Prints one JSON line with the statuses; the
mail itself is checked by the test at its SMTP sink.
"""
import json
import logging
import sys
import tempfile

from pyramid.authentication import AuthTktAuthenticationPolicy
from pyramid.authorization import ACLAuthorizationPolicy
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker
from webtest import TestApp

EMAIL = "carl@example.org"


def make_app(include, mail_settings, db_url):
    from kerno.web.pyramid import IKerno
    from paste.deploy.loadwsgi import appconfig
    from tests import _get_ini_path, _make_eko
    from tests.models import Base

    settings = dict(appconfig("config:" + _get_ini_path()))
    # test.ini's pyramid.includes would include pluserable before kerno is registered;
    # the app below includes it itself, as pluserable's functional tests do.
    settings.pop("pyramid.includes", None)
    settings.update(mail_settings)
    engine = create_engine(db_url)
    Base.metadata.create_all(engine)
    sas = scoped_session(sessionmaker(bind=engine))
    kerno = _make_eko(sas_factory=sas).kerno

    config = Configurator(settings=settings)
    config.registry.registerUtility(kerno, IKerno)
    config.add_route("index", "/")
    config.add_view(lambda request: Response("index!"), route_name="index")
    config.set_authorization_policy(ACLAuthorizationPolicy())
    config.set_authentication_policy(AuthTktAuthenticationPolicy("secret"))
    config.set_session_factory(SignedCookieSessionFactory("sum_see_krert"))
    config.include("pyramid_mako")
    config.include("pyramid_tm")  # pluserable's README: its mail rides the request's commit
    config.include(include)
    config.include("pluserable")
    return TestApp(config.make_wsgi_app()), sas


def main(root, include, *pairs):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    mail_settings = dict(pair.split("=", 1) for pair in pairs)
    with tempfile.TemporaryDirectory() as tmp:
        app, sas = make_app(include, mail_settings, f"sqlite:///{tmp}/pluserable.db")
        form = app.get("/register").forms[0]
        form["username"] = "carl"
        form["email"] = EMAIL
        form["password"] = "science123"
        form["password-confirm"] = "science123"
        registered = form.submit("submit")
        sas.commit()  # the app's own session: pluserable leaves committing to the app
        form = app.get("/forgot_password").forms[0]
        form["email"] = EMAIL
        forgot = form.submit("submit")
        sas.commit()
        print(json.dumps({"register": registered.status_int,
                          "forgot_password": forgot.status_int}))


if __name__ == "__main__":
    main(*sys.argv[1:])
