"""Log lines that cannot drive a terminal or forge a line, as text or as JSON.

:class:`~pyramid_txmail.util.printable.SafeLogger` escapes the arguments of
pyramid_txmail's own log calls, but a log file also gets records from other
libraries, exception texts and tracebacks (an ``SMTPResponseException``
quotes the relay's reply as it came).  So the command-line tools put the
escaping at the last step too, in the *formatter* of every handler:

* :class:`SafeFormatter` wraps the formatter a handler already has (the
  ini's ``[formatter_*]``, or basicConfig's) and escapes the message on one
  line and the traceback with its line ends kept, indented so that no line
  of it can pass for a record of its own;
* :class:`JsonFormatter` (``mail.log_format = json``) writes one JSON object
  per line -- ``time``, ``level``, ``logger``, ``message`` and, where the
  call gave them (``extra=``), :data:`FIELDS` -- ``json.dumps`` escapes
  every control character itself.

An application that wants the same in its own process names the class in
its ini's ``[formatter_x]`` section: ``class =
pyramid_txmail.util.logformat.JsonFormatter`` (or ``SafeFormatter``, which
takes the section's ``format`` and ``datefmt``).
"""
from __future__ import annotations

import copy
import datetime
import json
import logging

from .printable import printable

#: Record attributes copied into a JSON line when a log call set them (``extra=``).
FIELDS = ("message_id", "relay", "code", "attempt", "recipient", "recipients", "queue",
          "state")

LOG_FORMATS = ("text", "json")


def _escaped_record(record):
    """A copy of ``record`` whose message is already formatted and escaped on one line."""
    shown = copy.copy(record)
    shown.msg = printable(record.getMessage())
    shown.args = None
    return shown


class SafeFormatter(logging.Formatter):
    """Another formatter's output with control characters escaped.

    The message is escaped on one line (a ``\\n`` in a subject cannot start a
    fake log line); the whole output again with line ends kept, which covers
    exception texts and tracebacks.
    """

    def __init__(self, inner=None, datefmt=None, style="%", *args, **kwargs):
        super().__init__()
        if not isinstance(inner, logging.Formatter):  # an ini's [formatter_x] class = ...
            inner = logging.Formatter(inner or logging.BASIC_FORMAT, datefmt, style, *args,
                                      **kwargs)
        self.inner = inner

    def format(self, record):
        shown = _escaped_record(record)
        if record.exc_info and not record.exc_text:
            shown.exc_text = self.inner.formatException(record.exc_info)
        if shown.exc_text:
            shown.exc_text = _indented(shown.exc_text)
        if shown.stack_info:
            shown.stack_info = _indented(shown.stack_info)
        return printable(self.inner.format(shown), one_line=False)


def _indented(block):
    """A traceback with each line indented: an exception text's own line breaks (``str``
    of an error quoting a relay's reply or a Message-ID) cannot start a line that looks
    like a log record of its own."""
    return "\n".join("  " + line for line in printable(block, one_line=False).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message, the
    :data:`FIELDS` a call set, and ``exception`` (the traceback) when there is one."""

    def format(self, record):
        data = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                data[field] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        # ensure_ascii: every control character and bidi override becomes \\uXXXX
        return json.dumps(data, default=str, ensure_ascii=True)


def apply_log_format(log_format="text", root=None):
    """Make every handler configured so far (the root logger's and every named
    logger's: the ini may give ``pyramid_txmail`` its own) escape its output;
    ``json``: write JSON lines instead.  Idempotent."""
    loggers = [root or logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            current = handler.formatter
            if log_format == "json":
                if not isinstance(current, JsonFormatter):
                    handler.setFormatter(JsonFormatter())
            elif not isinstance(current, (SafeFormatter, JsonFormatter)):
                handler.setFormatter(SafeFormatter(current))
