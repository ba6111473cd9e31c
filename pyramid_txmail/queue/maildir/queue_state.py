"""Moved to :mod:`pyramid_txmail.queue.queue_state` (every backend's state dict);
this name keeps working for the spool's modules and older imports."""
from ..queue_state import *  # noqa: F401,F403
from ..queue_state import (  # noqa: F401 (the names that are not in __all__)
    HISTORY_KEEP, LATEST, MAX_ATTEMPTS, RECIPIENT_KEYS, TIME_KEYS, age, checked,
    dead_letter, epoch, expired, fold, record_attempt)
