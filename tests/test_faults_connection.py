"""A fault on one message must not spill onto the next one on the same connection.

The processor sends a pass's messages over one reused connection.  Here
only the first message meets the fault (the server's scripted replies are
lists: the fault, then acceptance); the messages after it must be sent
once each over the same connection -- after RSET, or in the same pipelined
stream -- unless the server said 421 (closing), when a new connection is
opened.  The first message ends as in tests/test_faults.py: dead-lettered
for a 5yz, sent at its retry for a 4yz.
"""
from __future__ import annotations

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.spool import Spool

from .faultserver import fault_server
from .reliability import record, runs
from .fault_tally import Tally, queue_messages, recipients
from .test_faults import CASES, FAILED, GROUP, processor_settings, walk
from .test_processor import Clock

pytestmark = pytest.mark.reliability

MESSAGES = runs(3, 10)
ACCEPT = {"mail": "250 OK", "rcpt": "250 OK", "data-command": "",
          "data": "250 Message accepted for delivery"}
NAMES = ("MAIL 451", "MAIL 550", "MAIL 550, then the connection closed",
         "RCPT 550 to one of three", "RCPT 452 to one of three", "DATA command 451",
         "DATA command 554", "after the final dot 451", "after the final dot 554",
         "after the final dot 421")
SELECTED = [c for c in CASES if c.name in NAMES]


def first_message_only(script, first):
    """The fault for the first message (``first``: its recipients), then acceptance."""
    script = dict(script)
    for key, accept in ACCEPT.items():
        reply = script.get(key)
        if isinstance(reply, dict):  # per role: only the first message's recipient
            script[key] = {addr: [reply[addr[0]], accept] for addr in first
                           if addr[0] in reply}
        elif reply:
            script[key] = [reply, accept]
    return script


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.parametrize("case", SELECTED, ids=[c.name for c in SELECTED])
def test_fault_on_the_first_message_of_a_connection(case, pipelining, tmp_path,
                                                    make_smtp_server, tls_files):
    spool = Spool(str(tmp_path / "spool"))
    batch = [recipients(i) for i in range(MESSAGES)]
    script = first_message_only(case.script, batch[0])
    if pipelining:
        script["ehlo-with"] = ["PIPELINING"]
    server = fault_server(make_smtp_server, script)
    handler = server.handler
    ids, _ = queue_messages(spool, batch, "one of many " + case.name)
    settings = processor_settings(server, spool, case, tls_files)
    clock = Clock()
    processor = Processor(spool, None, settings, clock=clock, rand=lambda: 0.5, workers=1)

    walk(processor, clock, settings, 1)
    closing = case.code == 421 or "close" in case.script
    # RSET (or the pipelined stream) cleans up after the fault: no new
    # connection, unless the server closed this one
    assert handler.connections == (2 if closing else 1)
    tally = Tally(spool, handler, batch, ids)
    assert all(tally.copies[tally.pair(i, a)] == 1
               for i in range(1, MESSAGES) for a in batch[i])
    walk(processor, clock, settings, 2)

    tally = Tally(spool, handler, batch, ids)
    for addr in batch[0]:
        pair = tally.pair(0, addr)
        if case.outcome[addr[0]] == FAILED:
            assert tally.copies[pair] == 0 and tally.dead[pair]["code"] == case.code
        else:  # accepted at once, or at the retry
            assert tally.copies[pair] == 1, addr
    assert all(tally.copies[tally.pair(i, a)] == 1
               for i in range(1, MESSAGES) for a in batch[i])
    assert tally.lost == [] and tally.duplicated == 0 and tally.waiting == []
    record(GROUP, f"one message of a connection: {case.name}"
           + (" (pipelining)" if pipelining else ""), runs=1, messages=tally.total,
           delivered=tally.delivered_count, duplicated=tally.duplicated,
           lost=len(tally.lost), held=tally.dead_count,
           detail=f"{MESSAGES} messages x 3 recipients over one connection, counted per "
                  "recipient; only the first meets the fault, the others are sent once "
                  "each without reconnecting (unless the server closed)")
