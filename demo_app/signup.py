"""The sign-up form: a user row and a welcome mail, committed together or not at all.

The order in :func:`signup_view` is the point of the demo:

1. ``request.mailer.send(welcome)`` -- the mail's row is INSERTed now, in the
   request's database transaction (nothing is committed yet),
2. add the user to ``request.dbsession`` (nothing is written yet),
3. ``request.dbsession.flush()`` -- the INSERT runs now; a duplicate address
   raises ``IntegrityError`` here, *after* the mail was handed over.

``send`` writes the mail's row into the SQL outbox in the same database, through
``request.dbsession``: on success pyramid_tm commits the user and the mail in one
database transaction.  On a duplicate the view dooms the transaction
(``request.tm.doom()``): pyramid_tm aborts it instead of committing, so the
half-done INSERT is rolled back and the welcome mail is dropped -- the
"already registered" page is rendered, nothing is sent.
"""
from __future__ import annotations

import email.errors
import logging

from email_validator import EmailNotValidError, validate_email
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.renderers import render_to_response
from pyramid.view import view_config
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from pyramid_txmail import MessageError

from .models import User
from .welcome import welcome_message

log = logging.getLogger(__name__)

NAME_MAX = 100


def _clean(value, limit):
    """One line of text, whitespace collapsed (a CR/LF can never reach a header)."""
    return " ".join(str(value or "").split())[:limit]


def validate(name, addr):
    """(errors, normalized address); ``errors`` maps a form field to its message."""
    errors = {}
    if not name:
        errors["name"] = "Please give a name."
    if not addr:
        errors["email"] = "Please give an email address."
    else:
        try:
            addr = validate_email(addr, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            errors["email"] = f"{addr!r} is not a usable email address: {exc}"
    return errors, addr


def _form(request, name="", addr="", errors=None, status=200):
    members = request.dbsession.scalar(select(func.count()).select_from(User))
    return render_to_response(
        "demo_app:templates/signup.jinja2",
        {"name": name, "email": addr, "errors": errors or {}, "members": members},
        request=request, response=_status(request, status))


def _status(request, status):
    response = request.response
    response.status_int = status
    return response


@view_config(route_name="home", request_method="GET")
def home_view(request):
    return _form(request)


@view_config(route_name="home", request_method="POST")
def signup_view(request):
    name = _clean(request.POST.get("name"), NAME_MAX)
    errors, addr = validate(name, _clean(request.POST.get("email"), 320))
    if not errors:
        try:
            msg = welcome_message(request, name, addr)
        except (ValueError, IndexError, email.errors.MessageError) as exc:
            errors["email"] = f"{addr!r} cannot be used in a mail header: {exc}"
    if errors:
        return _form(request, name, addr, errors, status=400)

    try:
        # Handed over BEFORE the INSERT runs: only the commit decides whether it goes out.
        message_id = request.mailer.send(msg)
    except MessageError as exc:  # refused by the mailer's checks: nothing was queued
        return _form(request, name, addr, {"email": f"The mail was refused: {exc}"},
                     status=400)
    user = User(name=name, email=addr, welcome_message_id=message_id)
    request.dbsession.add(user)
    try:
        request.dbsession.flush()
    except IntegrityError:
        # Duplicate address.  The session must be rolled back and the mail dropped:
        # dooming makes pyramid_tm abort the whole transaction instead of committing it.
        request.tm.doom()
        log.info("sign-up of %s refused: already registered; welcome mail %s dropped "
                 "with the aborted transaction", addr, message_id)
        return render_to_response("demo_app:templates/registered.jinja2", {"email": addr},
                                  request=request, response=_status(request, 409))
    log.info("user %s <%s> signed up; welcome mail %s queued with the commit",
             user.id, addr, message_id)
    return HTTPSeeOther(request.route_url("thanks", _query={"message_id": message_id}))


@view_config(route_name="thanks", renderer="demo_app:templates/thanks.jinja2")
def thanks_view(request):
    return {"message_id": request.GET.get("message_id", "")}
