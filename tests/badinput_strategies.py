"""Hypothesis strategies and checks shared by the bad-input properties (tests/test_badinput*.py).

Generated text mixes printable characters with the pieces that break mail
software: CR, LF, NUL and other controls, U+0085 / U+2028 (where
``str.splitlines`` breaks), text that looks like RFC 2047 encoded words,
quotes and other address specials, non-ASCII and very long runs.  About half
the examples are *dirty* (something in them may rightly be refused); the
others must arrive.
"""
from __future__ import annotations

import collections
import email.policy
import re

from hypothesis import strategies as st

CONTROLS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1b", "\x7f"]
SPECIALS = ["=?utf-8?q?caf=C3=A9?=", "=?iso-8859-1?b?4A==?=", "=?bogus?q?x?=",
            "\nBcc: victim@example.com", "\r\n\r\nbody", " ", "  ", "\t", '"', "(", ")",
            ",", "<", ">", "@", ";", ":", "\\", "ü", "€", "😀", "\u200b", "\x85", "\u2028",
            "é" * 40, "x" * 1200, "word " * 250]
_any = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


def text_with(pieces, max_size=8, plain=_printable):
    return st.lists(st.one_of(plain, st.sampled_from(pieces)), max_size=max_size).map("".join)


header_value = text_with(SPECIALS + CONTROLS, plain=_any)
clean_header_value = text_with(SPECIALS)
valid_header_name = st.one_of(
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.sampled_from(["Comments", "Keywords", "In-Reply-To", "References",
                     "List-Unsubscribe", "Organization", "X-Mailer", "x-lower"]))
header_name = valid_header_name | st.sampled_from(
    ["Subject", "X Bad", "X:Colon", "Ünï", "", "X-\x00", "X-\n"])  # invalid, or twice
line_break = st.sampled_from(["\n", "\r\n", "\r"])
body_line = st.one_of(text_with(SPECIALS[3:], 6), st.sampled_from(
    [".", "..", ". ", "From me", "x" * 1500, "é" * 700, "\x00", "a\tb "]))
body_text = st.lists(st.tuples(body_line, line_break), max_size=10).map(
    lambda pairs: "".join(line + br for line, br in pairs)) | text_with(
    ["\r\n.\r\n", "\n.\n", "\n.\r\n", "\r.\r", "\r\n.\n", "\n.\r", "x" * 2000] + CONTROLS)

ascii_local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,10}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s)
utf8_local = st.sampled_from(["jörg", "用户", "δοκιμή", "müller.k"])
domain = st.sampled_from(["example.com", "example.org", "bücher.example.com",
                          "münchen.example.org", "例え.example.jp"])
good_address = st.builds(lambda local, dom: f"{local}@{dom}",
                         st.one_of(ascii_local, ascii_local, utf8_local), domain)
BAD_ADDRESSES = ["no-at-sign", "a@@example.com", "a b@example.com", "@example.com",
                 "a@-bad-.com", "a@localhost", "a@", "a\n@example.com", "a@exa\rmple.com"]
bad_address = st.sampled_from(BAD_ADDRESSES)
display_name = text_with(SPECIALS + CONTROLS, 5, plain=_any)
clean_display_name = text_with(SPECIALS, 5)
attachment_data = st.binary(max_size=3000) | st.sampled_from(
    [b"\r\n.\r\n", b"a\n.\nMAIL FROM:<x@example.com>\n", b"\r.\r\n.\n" * 50])
content_type = st.sampled_from(["application/octet-stream", "text/plain", "image/png"])
# (filenames are read back with badinput_support.filename_of, not get_filename, which
# unquotes twice: "<a>", '"a"' and '""' are fair game)
attachment = st.tuples(attachment_data, text_with(SPECIALS + CONTROLS, 4, _any), content_type)
clean_attachment = st.tuples(attachment_data, text_with(SPECIALS, 4), content_type)


def suspicious(text):
    """Control characters (not TAB): a clear error for them is fine."""
    return any(ord(c) < 32 and c != "\t" or c == "\x7f" for c in text)


def phrase(name):
    """A display name as readers compare it: runs of SP/TAB are one, none at the ends
    (RFC 5322 3.2.2: they are folding white space, not part of the name)."""
    return re.sub(r"[ \t]+", " ", name).strip(" \t")


def eol(text):
    return text.replace("\r\n", "\n").replace("\r", "\n")


def names_culprit(exc, culprits):
    """The error names one of ``culprits`` (a header name, address or filename)."""
    text = str(exc)
    return any(repr(c) in text or (c and (c in text or repr(c)[1:-1] in text))
               for c in culprits)


HEADER_NAME_OK = re.compile(r"[!-9;-~]+")


def questionable(headers=(), addresses=(), names=(), filenames=()):
    """Something a clear error may refuse: a control character in a header value,
    display name or filename, a bad header name, or an address that is not one."""
    counts = collections.Counter(n.lower() for n, _ in headers)
    return (any(not HEADER_NAME_OK.fullmatch(n) or suspicious(v) for n, v in headers)
            or any(c > (email.policy.default.header_max_count(n) or c)  # e.g. 2 Subjects
                   for n, c in counts.items())
            or any(suspicious(t) for t in names)
            or any(suspicious(t) or "\t" in t for t in filenames)  # TAB too, in a filename
            or any(a in BAD_ADDRESSES for a in addresses))


def check_held(outcome, utf8):
    """True when the message was (rightly) dead-lettered instead of delivered: only a
    UTF-8 mailbox or header for a server without SMTPUTF8, with that reason."""
    if not outcome.held:
        return False
    [(state, reason)] = outcome.held
    assert not utf8 and state == "failed" and "SMTPUTF8" in reason, outcome.held
    return True


def dirty(draw):
    """About one example in four carries bad input somewhere; the rest must arrive.
    (Clean is 0: what hypothesis shrinks towards.)"""
    return draw(st.integers(0, 3)) == 3
