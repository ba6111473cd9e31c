"""The exceptions the outbox raises: the queue interface's own.

(Until the interface module defines all of them, the missing ones are made
here under the same names; this module is then a plain re-export.)
"""
from __future__ import annotations

from .. import interface as _interface

PoisonMessage = _interface.PoisonMessage


def _made(name, base, doc):
    return getattr(_interface, name, None) or type(name, (base,), {"__doc__": doc,
                                                                   "__module__": __name__})


ClaimLost = _made("ClaimLost", Exception, "The claim left this process while it was sending.")
NotFound = _made("NotFound", LookupError, "No message matches the id given.")
Refused = _made("Refused", Exception, "The operation does not apply to the message's state.")
Vanished = _made("Vanished", Exception, "The message left its state meanwhile.")


class _Ambiguous(LookupError):
    """More than one message matches the id given; ``candidates`` lists them."""

    def __init__(self, message, candidates):
        super().__init__(message)
        self.candidates = candidates


Ambiguous = getattr(_interface, "Ambiguous", None) or _Ambiguous
