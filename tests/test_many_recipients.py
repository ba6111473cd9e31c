"""A message with thousands of recipients is built in time linear in their number (issue 11, 10e).

One To and 10,000 Cc took 6.2 s in the view: ``prepare`` read the address
headers back with ``message.get_all()``, which hands each whole header to the
``email`` package's address-list parser -- and that parser slices the rest of
the string at every token, so its time grows with the square of the header.
The tests count what reaches that parser (no timing), and send the message
for real; ``make reliability`` sends 50,000 Cc, which the quadratic parser
alone would need many minutes for.
"""
from __future__ import annotations

import email.message
import email.policy
from email import _header_value_parser as parser

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail import Mail, get_mailer
from pyramid_txmail.interfaces import IMailOutbox
from pyramid_txmail.compose.message import prepare

from .reliability import record, runs

#: Longest header value the email package's quadratic parser may be given.
SMALL = 4096


@pytest.fixture
def parsed(monkeypatch):
    """The lengths of the values the email package's address-list parser saw."""
    seen = []
    real = parser.get_address_list

    def counting(value):
        seen.append(len(value))
        return real(value)

    monkeypatch.setattr(parser, "get_address_list", counting)
    return seen


def _cc(n):
    return [f"user{i}@example.org" for i in range(n)]


def test_a_mail_with_10000_cc_never_hands_the_whole_header_to_the_quadratic_parser(parsed):
    prepared = prepare(Mail(subject="s", to="a@example.org", cc=_cc(10_000), text="hi"),
                       "sender@example.org")
    assert len(prepared.toaddrs) == 10_001
    assert prepared.toaddrs[:2] == ("a@example.org", "user0@example.org")
    assert max(parsed, default=0) <= SMALL, parsed


def test_an_email_message_with_10000_cc_set_raw_is_not_reparsed(parsed):
    msg = email.message.EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = "a@example.org"
    msg.set_raw("Cc", ",\n ".join(_cc(10_000)))
    msg.set_content("hi")
    prepared = prepare(msg)
    assert len(prepared.toaddrs) == 10_001
    assert max(parsed, default=0) <= SMALL, parsed


def test_the_addresses_read_back_are_the_same_as_before():
    # what the header parser made of them, for the kinds of mailbox a header holds
    msg = email.message.EmailMessage()
    msg["From"] = '"Doe, Jane" <jane@example.org>'
    msg["To"] = "Jörg <jorg@example.org>, plain@example.org"
    msg.set_raw("Cc", '=?utf-8?q?J=C3=B6rg?= <j2@example.org>,\n "x, y" <xy@example.org>')
    msg["Bcc"] = "hidden@example.org"
    msg.set_content("hi")
    prepared = prepare(msg)
    assert prepared.fromaddr == "jane@example.org"
    assert prepared.toaddrs == ("jorg@example.org", "plain@example.org", "j2@example.org",
                                "xy@example.org", "hidden@example.org")


@pytest.mark.reliability
def test_many_cc_through_the_mailer():
    n = runs(10_000, 50_000)
    config = Configurator(settings={"mail.delivery": "memory",
                                    "mail.default_sender": "sender@example.org"})
    config.include("pyramid_txmail")
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    with manager:
        mailer.send(Mail(subject="many", to="a@example.org", cc=_cc(n), text="hi"))
    [sent] = config.registry.getUtility(IMailOutbox)
    assert len(sent.toaddrs) == n + 1
    record("builder", f"one To and {n:,} Cc built and sent (memory delivery)", messages=1,
           delivered=1, detail="within the test timeout: linear in the recipients")
