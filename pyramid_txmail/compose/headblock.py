"""The enqueue fast path: a common message's header block validated and written
here, without the ``email`` package's header registry (issue 14).

Why: ``send`` spent most of its time in the ``email`` package.  Every
``message["Date"] = ...`` parsed its value through the header registry, and
every header was refolded by its folder when written -- a 30-character
Subject that needs no folding too -- then folded once more to check it.
Most transactional mail is plain: ASCII headers that fit on a line and
simple mailboxes.  For that case :func:`fast_head` reads the headers once as
``(name, value)`` pairs, validates them by the same rules as
:mod:`~pyramid_txmail.compose.message`, and writes ``Name: value`` itself.

Exactness before speed.  A header is written here only when its text is
what the ``email`` package writes for it: printable ASCII on one line of at
most 78 columns (a header object's text being its parse tree's, as its
``fold`` writes it; a raw value's, the value as the policy writes raw
values).  Any other header is folded by the policy exactly as the generator
folds it, and checked as :func:`~pyramid_txmail.compose.serialize.check_folding`
checks it.  Whatever would make the stdlib path rewrite or refuse something
-- non-ASCII text, an encoded word, a mailbox this module's small grammar
does not cover, a long address line, SMTPUTF8, a policy other than the
stock ones, an address email-validator refuses -- makes :func:`fast_head`
return ``None``: the caller then takes the stdlib path, which raises the
error or writes the message.  The fast path never raises and never accepts
what that path refuses; tests/test_fastpath_property.py compares the two,
byte for byte.
"""
from __future__ import annotations

import email.policy
import email.utils
import functools
import re
import time
from email import _header_value_parser, headerregistry

from . import wire
from .addresses import _validated
from .serialize import ADDRESS_HEADERS, FOLD

__all__ = ["Head", "fast_head", "simple_addresses", "tree_text", "writing_policy"]

_HEADER_NAME = re.compile(r"[!-9;-~]+")
#: Printable ASCII, no space at either end: a header object's text written as it is.
_ONE_LINE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
#: A legacy (compat32) raw value ``email.header.Header`` writes unchanged:
#: printable words separated by single spaces.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
#: A raw value an ``EmailPolicy`` with ``refold_source="none"`` writes as it is:
#: printable ASCII and tabs, folded only with LF + space or tab.
_RAW = re.compile(r"[\t -~]*(?:\n[ \t][\t -~]*)*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ADDR = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
#: One mailbox of the grammar read here: ``addr``, ``Words <addr>`` or
#: ``"Quoted, name" <addr>`` (no backslash, no quote inside the quotes).
_MAILBOX = re.compile(rf'(?:(?:{_ATEXT}+(?: {_ATEXT}+)*|"[ !#-\[\]-~]*") <({_ADDR})>'
                      rf'|({_ADDR}))')
_MSGID = re.compile(r"<[0-9]+\.[0-9]+\.[0-9]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
_MAX = 78  # the stock policies' max_line_length, and serialize's rewrite limit
_WRITTEN_AS_DECODED = (headerregistry.UnstructuredHeader, headerregistry.MIMEVersionHeader,
                       headerregistry.ParameterizedMIMEHeader,
                       headerregistry.ContentTransferEncodingHeader,
                       headerregistry.MessageIDHeader)
_STOCK_FACTORY = email.policy.default.header_factory
_RECIPIENTS = ("to", "cc", "bcc")
_JOINED = _header_value_parser.TokenList.__str__


class Head:
    """What :func:`fast_head` found: the envelope, the Message-ID and the
    header block (bytes, LF line endings, ending with the blank line)."""

    __slots__ = ("fromaddr", "toaddrs", "message_id", "data")

    def __init__(self, fromaddr, toaddrs, message_id, data):
        self.fromaddr, self.toaddrs = fromaddr, toaddrs
        self.message_id, self.data = message_id, data


def simple_addresses(text):
    """The addresses of an address list in the grammar read here (mailboxes
    separated by ``", "``), or ``None`` when ``text`` is anything else.

    For such text ``email.utils.getaddresses`` finds the same addresses (the
    property test checks it); anything it might read otherwise is left to it.
    """
    if "=?" in text:
        return None
    found, pos, end = [], 0, len(text)
    while True:
        match = _MAILBOX.match(text, pos)
        if match is None:
            return None
        found.append(match.group(1) or match.group(2))
        pos = match.end()
        if pos == end:
            return found
        if not text.startswith(", ", pos):
            return None
        pos += 2


def _has_encoded_word(tree):
    """True when a header object's parse tree holds an RFC 2047 encoded word
    anywhere (the stdlib path refuses one inside an address; either way the
    text is not what was written)."""
    stack = [tree]
    while stack:
        token = stack.pop()
        if isinstance(token, list):
            if getattr(token, "token_type", None) == "encoded-word":
                return True
            stack.extend(token)
    return False


def _tree_text(tree, out):
    """Append ``str(tree)`` to ``out`` in one walk (as ``TokenList.__str__`` joins
    it); False, and stop, at an RFC 2047 encoded word anywhere in it."""
    for token in tree:
        if isinstance(token, list):
            if token.token_type == "encoded-word":
                return False
            if type(token).__str__ is _JOINED:
                if not _tree_text(token, out):
                    return False
            elif _has_encoded_word(token):  # a quoted string or comment: its own str
                return False
            else:
                out.append(str(token))
        elif type(token).__str__ is str.__str__:
            out.append(token)
        else:  # EWWhiteSpaceTerminal (between encoded words) and anything new
            return False
    return True


def tree_text(value):
    """``str(value._parse_tree)`` of an address header object -- the text its
    ``fold`` writes -- or ``None`` when the tree holds an encoded word."""
    tree = value._parse_tree
    out = []
    if isinstance(tree, list) and _tree_text(tree, out):
        return "".join(out)
    return None


@functools.lru_cache(maxsize=16)
def writing_policy(policy):
    """The policy the stdlib path writes a message of ``policy`` with (not SMTPUTF8),
    or ``None`` for a policy the fast path leaves to it."""
    if policy.max_line_length != _MAX or policy.raise_on_defect:
        return None
    if type(policy) is email.policy.EmailPolicy:
        factory = policy.header_factory
        if factory is not _STOCK_FACTORY and not (
                type(factory) is headerregistry.HeaderRegistry
                and factory.registry == _STOCK_FACTORY.registry
                and factory.default_class is _STOCK_FACTORY.default_class
                and factory.base_class is _STOCK_FACTORY.base_class):
            return None
        return policy.clone(linesep="\n", utf8=False, refold_source="none")
    if type(policy) is email.policy.Compat32:
        return policy.clone(linesep="\n")
    return None


def _written(name, value, legacy, tree=None):
    """The text the policy writes after ``Name: `` for ``value`` when it can be
    written here, else ``None`` (the policy folds it).  ``tree``: an address
    header object's :func:`tree_text`."""
    if legacy:
        if type(value) is str and _PLAIN.fullmatch(value) and len(name) + 2 + len(value) \
                <= _MAX:
            return value
        return None
    if type(value) is str:
        return value if _RAW.fullmatch(value) else None
    if not isinstance(value, headerregistry.BaseHeader) \
            or type(value).fold is not headerregistry.BaseHeader.fold:
        return None
    if isinstance(value, headerregistry.AddressHeader):
        text = tree if tree is not None else tree_text(value)  # Resent-From...
        if text is None:
            return None
    elif isinstance(value, headerregistry.DateHeader):
        text = str(value._parse_tree)  # empty when the date did not parse
    elif isinstance(value, _WRITTEN_AS_DECODED):
        text = str(value)  # these keep str(parse tree) as their value
    else:
        return None
    if _ONE_LINE.fullmatch(text) and len(value.name) + 2 + len(text) <= _MAX:
        return text
    return None


def _line(policy, name, value, legacy, tree=None):
    """One header as the generator writes it, or ``None`` when it could not
    be written (or would not be one header line and its continuations)."""
    text = _written(name, value, legacy, tree)
    if text is not None:
        if type(value) is str:
            return f"{name}: {text}\n"
        if value.name == name:
            return f"{name}: {text}\n"
    try:
        folded = policy.fold_binary(name, value).decode("ascii")
    except (ValueError, LookupError):  # UnicodeError is a ValueError
        return None
    if any(line[:1] not in (" ", "\t") for line in folded.split("\n")[1:-1] if line):
        return None
    return folded


def _addresses(value, text):
    """The addresses of an address header (``text``: ``str(value)``), or ``None``
    for the stdlib path.  A header object's encoded words are looked for by
    :func:`tree_text`, which the caller calls first."""
    if type(value) is str:
        text = FOLD.sub(" ", text)
    found = simple_addresses(text)
    if found is None:
        return None
    envelope = []
    for address in found:
        form, why = _validated(address)
        if why is not None:
            return None
        envelope.append(form)
    return envelope


def _rewrite_free(name, text):
    """True when ``serialize.rewrite_addresses`` leaves this address header as it is."""
    return not any(len(word) > 76 for word in text.split()) and "=?" not in text \
        and len(name) + 2 + len(text) <= _MAX


_last_date = (None, None)
_FORMATDATE = email.utils.formatdate
_last_stamp = (None, None)


def _date_stamp():
    """``email.utils.formatdate(localtime=True)``, made once a second.

    The stamp names whole seconds and the local offset of that second, so
    within one second it is the same string (it cost ~4 us a message).  Near
    the end of a second it is made afresh: ``formatdate`` rounds the time to
    microseconds, which can carry it into the next second.  A ``formatdate``
    replaced in ``email.utils`` (a test fixing the date) is called every time,
    as the stdlib path calls it.
    """
    global _last_stamp
    if email.utils.formatdate is not _FORMATDATE:
        return email.utils.formatdate(localtime=True)
    now = time.time()
    second = int(now)
    last = _last_stamp
    if last[0] == second and now - second < 0.999:
        return last[1]
    stamp = _FORMATDATE(now, localtime=True)
    if now - second < 0.999:
        _last_stamp = (second, stamp)
    return stamp


def _date_text(stamp):
    """What a DateHeader made from ``stamp`` holds (its value, re-formatted
    from the parsed date); the last one remembered, as the stamp changes once
    a second (one tuple, replaced whole: threads never see half of it)."""
    global _last_date
    last = _last_date
    if last[0] != stamp:
        last = _last_date = (stamp, email.utils.format_datetime(
            email.utils.parsedate_to_datetime(stamp)))
    return last[1]


def fast_head(headers, policy, default_sender=None, fromaddr=None, toaddrs=None):
    """A :class:`Head` for the top-level ``headers`` (``(name, value)`` pairs,
    validated by ``check_headers``) of a message of ``policy``, built as
    ``prepare()`` builds it -- From, Message-ID and Date added, Bcc removed --
    or ``None`` when the stdlib path must do it (see the module's docstring).
    """
    write_policy = writing_policy(policy)
    if write_policy is None:
        return None
    legacy = type(policy) is email.policy.Compat32
    found = {"from": [], "sender": [], "reply-to": [], "to": [], "cc": [], "bcc": []}
    present = set()
    kept = []
    for name, value in headers:
        low = name.lower()
        present.add(low)
        text = str(value)
        if not text.isascii():
            return None
        tree = None
        if low in found:
            if getattr(value, "_parse_tree", None) is not None:
                tree = tree_text(value)
                if tree is None:
                    return None
            addresses = _addresses(value, text)
            if addresses is None or low in ADDRESS_HEADERS and not _rewrite_free(name, text):
                return None
            found[low].extend(addresses)
            if low == "bcc":
                continue
        kept.append((name, value, tree))
    added = []
    if "from" not in present:
        sender = default_sender or fromaddr
        addresses = sender and _addresses(sender, sender)
        if not addresses or not _PLAIN.fullmatch(sender) or not _rewrite_free("From", sender):
            return None
        found["from"] = addresses
        added.append(f"From: {sender}\n")
    senders = found["sender"] or found["from"]
    if fromaddr:
        fromaddr, why = _validated(fromaddr)
        if why is not None:
            return None
    else:
        fromaddr = senders[0]
    recipients = [a for low in _RECIPIENTS for a in found[low]]
    if toaddrs is None:
        toaddrs = recipients
    else:
        checked = [_validated(a) for a in toaddrs]
        if any(why is not None for _, why in checked):
            return None
        toaddrs = [form for form, _ in checked]
    toaddrs = tuple(dict.fromkeys(toaddrs))
    if not toaddrs or wire.needs_smtputf8(fromaddr, [*toaddrs, *senders, *found["reply-to"],
                                                     *recipients]):
        return None
    if "message-id" in present:
        first = next(v for n, v in headers if n.lower() == "message-id")
        message_id = str(policy.header_fetch_parse("Message-ID", first)).strip()
    else:
        message_id = email.utils.make_msgid(domain=fromaddr.rpartition("@")[2])
        if not _MSGID.fullmatch(message_id) or len(message_id) > _MAX - 12:
            return None
        added.append(f"Message-ID: {message_id}\n")
    if "date" not in present:
        stamp = _date_stamp()
        added.append(f"Date: {stamp if legacy else _date_text(stamp)}\n")
    lines = []
    for name, value, tree in kept:
        if not _HEADER_NAME.fullmatch(name):
            return None
        line = _line(write_policy, name, value, legacy, tree)
        if line is None:
            return None
        lines.append(line)
    lines.extend(added)
    lines.append("\n")
    return Head(fromaddr, toaddrs, message_id, "".join(lines).encode("ascii"))
