"""The exceptions the outbox raises: the queue interface's own (re-exported)."""
from __future__ import annotations

from ..interface import (  # noqa: F401
    Ambiguous, ClaimLost, NotFound, PoisonMessage, QueueAway, Refused, Vanished)
