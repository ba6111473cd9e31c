"""Text from outside, made safe to print on a terminal or in a log: one helper for all.

Names of spool files, headers, addresses and server replies come from
whoever wrote the file or runs the server.  Printed raw, a newline in a
file name splits a row of ``txmail-queue list`` (or forges a log line),
and an ESC sequence moves the operator's cursor, recolours the terminal
or rewrites what it shows.  :func:`printable` shows every control
character, every format character (Unicode category Cf: the bidi marks and
overrides RLM, ALM, LRE..PDF, LRI..PDI, zero-width and BOM characters that
reorder or hide text) and every surrogate (a non-UTF-8 file name's bytes,
decoded with ``surrogateescape``, or a lone one read from a JSON state file:
it cannot even be encoded) as an escape (``\\x1b``, ``\\u202e``, ``\\udcff``);
:class:`SafeLogger` applies it to every argument of every log call, so
that no call site can forget it.
"""
from __future__ import annotations

import logging
import re

#: Unicode category Cf (format characters) as of Unicode 14 (Python 3.11's
#: unicodedata), written out so that importing costs nothing; a test checks it
#: against the running Python's unicodedata, so a newer Unicode cannot slip by.
FORMAT_CHARACTERS = ("\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
                     "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
                     "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
                     "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
#: C0 but newline and tab, DEL, C1, the line and paragraph separators, surrogates, Cf
_ALWAYS = "\x7f-\x9f\u2028\u2029\ud800-\udfff" + FORMAT_CHARACTERS
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f" + _ALWAYS + "]")
_UNSAFE_LINE = re.compile("[\x00-\x1f" + _ALWAYS + "]")


def _escape(match):
    code = ord(match.group())
    if code < 256:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text, one_line=True):
    """``text`` (``str()`` of anything) with control characters escaped; ``None`` is ``-``.

    ``one_line=False`` keeps newlines and tabs (a message body shown whole).
    """
    if text is None:
        return "-"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return (_UNSAFE_LINE if one_line else _UNSAFE).sub(_escape, str(text))


class _Shown:
    """A log argument that formats escaped under ``%s`` and ``%r`` alike."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return printable(self.value)

    def __repr__(self):
        return printable(repr(self.value))


def _safe(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value  # %d, %.1f keep working
    return _Shown(value)


def safe_args(args):
    """Log-call arguments with every text escaped (a single mapping: its values)."""
    if len(args) == 1 and isinstance(args[0], dict):
        return ({k: _safe(v) for k, v in args[0].items()},)
    return tuple(_safe(a) for a in args)


class SafeLogger:
    """A :class:`logging.Logger` whose calls escape their arguments (:func:`printable`).

    The format string is the caller's own text and stays as it is; the
    logger's name, level and handlers are the wrapped logger's, so
    configuration and ``caplog`` see no difference.
    """

    def __init__(self, logger):
        self._logger = logger

    def __getattr__(self, name):  # name, level, isEnabledFor, handlers...
        return getattr(self._logger, name)

    def log(self, level, msg, *args, **kwargs):
        if self._logger.isEnabledFor(level):
            kwargs.setdefault("stacklevel", 2)
            self._logger.log(level, msg, *safe_args(args), **kwargs)

    def _at(level):  # noqa: N805 (a method factory, used in the class body)
        def call(self, msg, *args, **kwargs):
            if self._logger.isEnabledFor(level):
                kwargs.setdefault("stacklevel", 2)
                self._logger.log(level, msg, *safe_args(args), **kwargs)
        call.__name__ = logging.getLevelName(level).lower()
        return call

    debug = _at(logging.DEBUG)
    info = _at(logging.INFO)
    warning = _at(logging.WARNING)
    error = _at(logging.ERROR)
    critical = _at(logging.CRITICAL)
    del _at

    def exception(self, msg, *args, exc_info=True, **kwargs):
        kwargs.setdefault("stacklevel", 3)
        self.error(msg, *args, exc_info=exc_info, **kwargs)


def get_logger(name):
    """``logging.getLogger(name)`` whose calls escape their arguments."""
    return SafeLogger(logging.getLogger(name))
