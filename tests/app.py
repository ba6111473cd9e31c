"""A small Pyramid app for the functional tests (WebTest)."""
from __future__ import annotations

from email.message import EmailMessage

from pyramid.config import Configurator
from pyramid.response import Response


def make_message(params):
    msg = EmailMessage()
    msg["To"] = params.get("to", "alice@example.com")
    msg["Subject"] = params.get("subject", "Hello")
    if params.get("bcc"):
        msg["Bcc"] = params["bcc"]
    msg.set_content(params.get("body", "Hello there.\n"))
    return msg


def send(request):
    ids = [request.mailer.send(make_message(request.params))
           for _ in range(int(request.params.get("count", 1)))]
    return Response("\n".join(ids))


def send_then_fail(request):
    request.mailer.send(make_message(request.params))
    raise RuntimeError("the view failed after sending")


def send_then_abort(request):
    request.mailer.send(make_message(request.params))
    request.tm.abort()
    request.tm.begin()
    return Response("aborted")


def send_then_doom(request):
    request.mailer.send(make_message(request.params))
    request.tm.doom()
    return Response("doomed")


def send_then_veto(request):
    request.mailer.send(make_message(request.params))
    return Response("vetoed", headers={"x-tm": "abort"})


def savepoint(request):
    request.mailer.send(make_message({"subject": "before savepoint"}))
    point = request.tm.savepoint()
    request.mailer.send(make_message({"subject": "after savepoint"}))
    point.rollback()
    request.mailer.send(make_message({"subject": "after rollback"}))
    return Response("ok")


def bad(request):
    from pyramid_txmail import MessageError

    try:
        request.mailer.send(make_message(request.params))
    except MessageError as exc:
        return Response(f"{type(exc).__name__}: {exc}", status=400)
    return Response("sent")


def veto(request, response):
    return response.headers.get("x-tm") == "abort"


def main(settings, subscribers=()):
    settings = dict(settings)
    settings.setdefault("mail.default_sender", "Sender <sender@example.com>")
    settings.setdefault("tm.commit_veto", "tests.app.veto")
    config = Configurator(settings=settings)
    config.include("pyramid_txmail")
    for name, view in [("send", send), ("fail", send_then_fail), ("abort", send_then_abort),
                       ("doom", send_then_doom), ("veto", send_then_veto),
                       ("savepoint", savepoint), ("bad", bad)]:
        config.add_route(name, "/" + name)
        config.add_view(view, route_name=name)
    for iface, handler in subscribers:
        config.add_subscriber(handler, iface)
    return config.make_wsgi_app()
