"""Every case the bad-input properties have found, pinned as explicit hypothesis examples.

A random search finds a case once; only an explicit ``@example`` makes every
later run (``make test``, ``make reliability``, ``make explore``) try it again.
So each defect a property run found is kept here, in the property's own input
format, next to the number it has in the closing note of issue 6 ("Bad
input" 11-30) or the issue that reported it.  tests/test_badinput_found.py
pins the same defects as small hand-written tests, with the story of each.

When ``make explore`` finds a new case: add its falsifying example here (as
hypothesis printed it, with a ``via`` saying where it came from), see it fail,
then fix the library -- or the property's oracle, when the property was wrong.
"""
from __future__ import annotations

from hypothesis import example

LITERAL = "=?utf-8?q?caf=C3=A9?= and =?x?"
UNICODE_BREAKS = "a\x85b\u2028c\u2029d"
OCTET = "application/octet-stream"


def pinned(cases):
    """A decorator applying ``example(**kwargs).via(why)`` for each ``(why, kwargs)``."""
    def apply(test):
        for why, kwargs in reversed(cases):
            test = example(**kwargs).via(why)(test)
        return test

    return apply


def pinned_detail(cases):
    """The report's note on a property row: how many of its examples are pinned."""
    return f"the first {len(cases)} examples are the pinned cases (tests/badinput_pinned.py)"


# -- the Mail builder (tests/test_badinput.py: mail_inputs) --------------------------------

def _mail(mode="queue", utf8=True, **spec):
    return {"spec": {"subject": "s", "to": [("", "a@example.com")], "headers": [],
                     "text": "t", "html": None, "attachments": [], **spec},
            "mode": mode, "utf8": utf8}


MAIL = [
    *[(f"issue 6, bad input 11: {brk!r} in a display name added a Bcc: header",
       _mail(to=[(f"x{brk}Bcc: evil@example.com", "jörg@example.com")]))
      for brk in ("\x85", "\u2028", "\u2029")],
    ("issue 6, bad input 12: a header name ending in a newline passed",
     _mail(headers=[("X-\n", "v")])),
    ("issue 6, bad input 13: an IDN domain went as an encoded word in the address",
     _mail(to=[("Jörg", "jorg@bücher.example.com")], utf8=False)),
    ("issue 6, bad input 14: literal '=?...?=' text arrived decoded",
     _mail("direct", subject=LITERAL, to=[(LITERAL, "jorg@example.com")],
           headers=[("X-Note", LITERAL)], attachments=[(b"data", LITERAL, OCTET)])),
    ("issue 6, bad input 14: literal '=?...?=' text beside a UTF-8 mailbox",
     _mail("direct", subject=LITERAL, to=[(LITERAL, "jörg@example.com")])),
    ("issue 6, bad input 15: U+0085, U+2028, U+2029 were dropped from encoded text",
     _mail(subject=UNICODE_BREAKS, to=[(UNICODE_BREAKS, "jorg@example.com")],
           attachments=[(b"data", UNICODE_BREAKS, OCTET)], utf8=False)),
    ("issue 6, bad input 16: the error for a bad header name named the wrong fault",
     _mail(headers=[("", "v")])),
    ("issue 6, bad input 16: the error for a NUL named the wrong fault",
     _mail(subject="a\x00b")),
    ("issue 6, bad input 17: a display name too long to fold made a 1,201-octet line",
     _mail(to=[("x" * 1200, "a@example.com")], utf8=False)),
    ("issue 6, bad input 18: a TAB in a (name, address) pair was refused",
     _mail(to=[("Ann\tBell", "a@example.com")])),
    ("issue 6, bad input 26-29: a non-ASCII name holding '=?' text, to a UTF-8 mailbox",
     _mail(to=[("\xa0" + LITERAL, "jörg@example.com")])),
    ("issue 6, bad input 26-29: an '=?' name beside a UTF-8 mailbox was quoted as it is",
     _mail(to=[("\xa0", "jörg@example.com"), (LITERAL, "jörg@example.com")])),
    ("issue 11, finding 11: an attachment named '\"\"' arrived with an empty name",
     _mail(attachments=[(b"0", '""', OCTET)])),
    ("issue 11, finding 11 (its class): quotes or angle brackets around a filename",
     _mail(attachments=[(b"0", '"a"', OCTET), (b"1", "<a>", "text/plain")], utf8=False)),
]


# -- EmailMessage and legacy Message (tests/test_badinput.py: email_message_inputs) -------

def _email(kind="EmailMessage", utf8=True, mode="queue", **spec):
    return {"spec": {"kind": kind, "to": [("", "a@example.com")], "headers": [],
                     "text": "t", "html": None, "attachments": [], "envelope": None,
                     **spec},
            "mode": mode, "utf8": utf8}


LONG_NAME = "0\xa0\xa0\U00010000" + "x" * 1200 + "000\xa0\xa0\xa0"
SPACED = "0\xa0\xa0\xa0\xa0\xa0\xa0𐀀𐀀0\xa0\xa0\xa0\xa0\xa0ࠀ𐀀𐀀  ¡"

EMAIL_MESSAGE = [
    ("issue 6, bad input 11: a legacy raw value with U+2028 is refused, naming To",
     _email("Message", to=[("x\u2028Bcc: evil@example.com", "jörg@example.com")])),
    ("issue 6, bad input 13: an IDN domain in a header, without SMTPUTF8",
     _email(to=[("Jörg", "jorg@bücher.example.com")], utf8=False)),
    *[(f"issue 6, bad input 17: a display name too long to fold ({kind})",
       _email(kind, to=[("x" * 1200, "a@example.com")], utf8=False))
      for kind in ("EmailMessage", "Message")],
    ("issue 6, bad input 19: a legacy Message to a UTF-8 mailbox had its To encoded",
     _email("Message", to=[("Jörg", "jörg@example.com")], headers=[("Comments", "Grüße")])),
    ("issue 6, bad input 20: 'Jö, x' was written unquoted under SMTPUTF8",
     _email(to=[("Jö, x", "a@example.com"), ("", "jörg@example.com")])),
    ("issue 6, bad input 21: the comma between two mailboxes was encoded",
     _email(to=[("\U000d42adĞ\U001068be\U001074f1³ć,L\U0003f633ĩ\U000525eaÒu\u200b",
                 "00@example.com"), ("", "b@example.com")], utf8=False)),
    *[(f"issue 6, bad input 23: a long quoted ASCII name starting {start!r} lost its quotes",
       _email(to=[(start + "word " * 60, "00@example.com")], utf8=False))
      for start in (":", "<")],
    ("issue 6, bad input 24: a long non-ASCII header gained a space",
     _email(headers=[("Comments", "\xa0" + "word " * 40 + "¡")], utf8=False)),
    ("issue 6, bad input 25: a legacy encoded name decoding to a line break leaked "
     "a bare ValueError",
     _email("Message", to=[("", "jörg@example.com"), ("", "jörg@example.com"),
                           ("000\xa0\xa0\xa0\xa0\xa0\nBcc: victim@example.com",
                            "a@example.com")])),
    ("issue 6, bad input 26: a legacy encoded long name was encoded twice",
     _email("Message", to=[("0000" + "\xa0" * 7 + "𐀀0" + "\xa0" * 9 + "𐀀𐀀", "a@example.com")],
            utf8=False)),
    ("issue 6, bad input 27: a long legacy Subject to a UTF-8 mailbox was corrupted",
     _email("Message", to=[("", "jörg@example.com")],
            headers=[("Subject", "\xa0" + "x" * 1200)])),
    *[(f"issue 6, bad input 28: a long encoded name beside a UTF-8 mailbox was "
       f"refolded for minutes ({kind})",
       _email(kind, to=[(LONG_NAME, "a@example.com"), ("", "jörg@example.com")]))
      for kind in ("EmailMessage", "Message")],
    ("issue 6, bad input 29: a legacy encoded name '0:' was read as a group",
     _email("Message", to=[("", "00@example.com"), ("", "00@example.com"),
                           ("0:\xa0\xa0\xa0\xa0", "00@example.com")],
            envelope=["jörg@example.com"])),
    ("issue 6, bad input 30: the spaces between two non-ASCII words were dropped",
     _email(headers=[("X-0", SPACED), ("Subject", SPACED)], utf8=False)),
    ("issue 11, finding 11: a legacy folded header 'Comments: 0\\n 0' (unfolds to '0 0')",
     _email("Message", headers=[("Comments", "0\n 0")])),
    ("issue 11, finding 11 (its class): a legacy folded header, CRLF and TAB",
     _email("Message", headers=[("Comments", "a\r\n\tb"), ("X-0", "c\n  d ")], utf8=False)),
]


# -- pyramid_mailer's Message (tests/test_badinput.py: pyramid_mailer_inputs) --------------

def _pyramid(mode="queue", utf8=True, **spec):
    return {"spec": {"subject": "s", "sender": "sender@example.org",
                     "recipients": ["a@example.com"], "cc": [], "bcc": [],
                     "extra_headers": {}, "body": "t", "html": None, "attachments": [],
                     **spec},
            "mode": mode, "utf8": utf8}


PYRAMID_MAILER = [
    ("issue 6, bad input 22: a Message without a sender ignored mail.default_sender",
     _pyramid(sender=None)),
    ("issue 6, bad input 16: a line break in a field must be refused naming the field",
     _pyramid(subject="a\nBcc: x@example.com")),
    ("issue 6, bad input 16: a CR in an extra header must be refused naming it",
     _pyramid(extra_headers={"X-Note": "a\rb"})),
]
