"""Durations written for people (``"5d 2h"``), in reasons and in ``txmail-queue``.

Here, at the bottom, because the queue (a claim's age in its reason) and the
processor and scripts above it all write them the same way.
"""
from __future__ import annotations


def format_duration(seconds):
    """``"5d 2h"``, ``"3h 20m"``, ``"45m"``, ``"30s"``: for people reading reasons."""
    seconds = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            rest = (seconds % size) // subsize
            return f"{seconds // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"
