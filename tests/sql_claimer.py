"""A claimer in a process of its own, for the SQL outbox's multi-process tests.

``python tests/sql_claimer.py URL drain``: claim and retire until nothing is
left, printing each id claimed.  ``python tests/sql_claimer.py URL hold
TIMEOUT``: claim one message inside a pass scope (its lease renewed every
TIMEOUT/3), print its id and sleep until killed.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyramid_txmail.processor.pass_stats import PassStats  # noqa: E402
from pyramid_txmail.queue.sql import SQLQueue  # noqa: E402
from pyramid_txmail.settings import MailSettings  # noqa: E402


def main(url, mode, timeout="60"):
    queue = SQLQueue(url, claim_timeout=float(timeout))
    settings = MailSettings(claim_timeout=float(timeout))
    with queue.pass_scope(settings) as scope:
        for ticket in queue.candidates(time.time(), 10 ** 9, PassStats()):
            claimed = queue.claim(ticket)
            scope.add(claimed)
            print(claimed.name, flush=True)
            if mode == "hold":
                while True:
                    time.sleep(3600)
            queue.retire(claimed)
            scope.discard(claimed)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
