"""Every fault a relay can show, against the real processor and a real spool.

Each case queues messages to three recipients each (a, b, c: distinct
addresses per message, so every RCPT and every copy can be attributed),
runs :class:`~pyramid_txmail.processor.processor.Processor` against a
:mod:`tests.faultserver` that injects the fault for ``FAULTY`` attempts
(the fake clock walks the retry schedule), then heals the server and runs
again, and again later to see that nothing more happens.  Per recipient
the case says how it must end:

* ``SENT``: accepted at the first attempt, exactly one copy;
* ``LATER``: deferred while the fault lasts, then delivered, exactly once;
* ``NEXT``: deferred by the first attempt only, delivered exactly once;
* ``FAILED``: dead-lettered in ``failed/`` with the SMTP code and text,
  never delivered and never tried again.

Duplicates are expected only in the RFC 1047 window: the connection is
lost (or the reply is late) after the final dot, when the server has the
message but the client cannot know.  Those copies are counted as
``duplicated``.  Counts are per message and recipient.
"""
from __future__ import annotations

import dataclasses

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool

from .faultserver import fault_server, message_id
from .reliability import record, runs
from .fault_tally import Tally, copies_by_pair, queue_messages, recipients
from .test_processor import Clock

pytestmark = pytest.mark.reliability

GROUP = "faults"
#: Messages per case, and attempts made while the fault lasts.
MESSAGES = runs(2, 8)
#: Timeouts cost real time: fewer messages for the slow-reply cases.
SLOW_MESSAGES = runs(1, 4)
FAULTY = runs(2, 4)
SENT, LATER, NEXT, FAILED = "sent", "later", "next", "failed"
PASSWORD = "s3cret-fault-pw"


@dataclasses.dataclass
class Case:
    name: str
    script: dict
    outcome: dict  # role ("a", "b", "c") -> SENT | LATER | NEXT | FAILED
    code: int | None = None  # the code a FAILED recipient's dead letter records
    duplicates: bool = False  # the RFC 1047 window: copies before the heal are expected
    server: str = ""  # "tls" or "auth"
    settings: dict = dataclasses.field(default_factory=dict)
    size: int = 0  # body size in octets (0: a few lines)


def all_(outcome):
    return dict.fromkeys("abc", outcome)


def only_b(outcome, others=SENT):
    return {"a": others, "b": outcome, "c": others}


def _later_or_failed(code):
    return FAILED if code >= 500 else LATER


CODES = (421, 451, 452, 550, 552, 554)
TEXT = {421: "4.3.2 service shutting down", 451: "4.3.0 local error, try later",
        452: "4.5.3 too many recipients", 550: "5.1.1 mailbox unavailable",
        552: "5.3.4 message too big", 554: "5.7.1 transaction failed"}
SLOW = {"timeout": "0.4"}
DELAY = 1.2

CASES = (
    # RFC 5321 4.2.3: 421 "may be a reply to any command if the service knows
    # it must shut down" -- it is closing the channel (3.8): everything not
    # yet accepted is deferred.  552 to MAIL, to the
    # DATA command or after the dot is permanent (storage exceeded).
    [Case(f"MAIL {c}", {"mail": f"{c} {TEXT[c]}"}, all_(_later_or_failed(c)), c)
     for c in CODES]
    # Some servers hang up right after refusing the sender: the refusal
    # stands (with PIPELINING the replies still owed never come).
    + [Case(f"MAIL {c}, then the connection closed", {"mail": f"{c} {TEXT[c]}",
                                                       "close": "mail"},
            all_(_later_or_failed(c)), c) for c in (451, 550, 554)]
    # A refused recipient does not stop the others (RFC 5321 3.3).  421 to one
    # RCPT closes the session: the recipients accepted before it get no DATA
    # and are deferred with the rest.  552 to RCPT is "too many recipients":
    # RFC 5321 4.5.3.1.10 says to treat it as 452, temporary.
    + [Case(f"RCPT {c} to one of three", {"rcpt": {"b": f"{c} {TEXT[c]}"}},
            all_(LATER) if c == 421 else
            only_b(LATER if c == 552 else _later_or_failed(c)), c)
       for c in CODES]
    + [Case("RCPT 550 to all three", {"rcpt": f"550 {TEXT[550]}"}, all_(FAILED), 550),
       # a and c are deferred by the hang-up, and sent at the next attempt
       # (b, dead-lettered, is no longer in it)
       Case("RCPT 550 to one, then the connection closed",
            {"rcpt": {"b": f"550 {TEXT[550]}"}, "close": "rcpt"},
            {"a": NEXT, "b": FAILED, "c": NEXT}, 550),
       Case("RCPT 451 to all three", {"rcpt": f"451 {TEXT[451]}"}, all_(LATER), 451),
       Case("RCPT 550 to one, 451 to another",
            {"rcpt": {"b": f"550 {TEXT[550]}", "c": f"451 {TEXT[451]}"}},
            {"a": SENT, "b": FAILED, "c": LATER}, 550)]
    + [Case(f"DATA command {c}", {"data-command": f"{c} {TEXT[c]}"},
            all_(_later_or_failed(c)), c) for c in CODES]
    # RFC 5321 4.3.2: DATA is answered 354 before any data; a 2yz there is a
    # protocol error (or replies out of step), not a delivery.
    + [Case("DATA command answered 250 instead of 354", {"data-command": "250 2.0.0 OK"},
            all_(LATER))]
    + [Case(f"after the final dot {c}", {"data": f"{c} {TEXT[c]}"},
            all_(_later_or_failed(c)), c) for c in CODES]
    + [Case("after the final dot 554, then the connection closed",
            {"data": f"554 {TEXT[554]}", "close": "data"}, all_(FAILED), 554),
       Case("EHLO 421 (session refused)", {"ehlo": f"421 {TEXT[421]}"}, all_(LATER))]
    # RFC 5321 3.8: a client whose connection is closed or reset treats the
    # transaction as if 451 had been received -- after the final dot too,
    # where the server may have the message (RFC 1047: a duplicate).
    + [Case("drop at MAIL", {"drop": "mail"}, all_(LATER)),
       Case("drop at RCPT of one of three", {"drop": "rcpt", "drop-rcpt": "b"}, all_(LATER)),
       Case("drop at the DATA command", {"drop": "data-command"}, all_(LATER)),
       Case("drop mid-DATA (before the final dot)", {"drop": "data-mid"}, all_(LATER)),
       Case("drop mid-DATA of a 3 MB message (streamed from the spool)",
            {"drop": "data-mid"}, all_(LATER), size=3 << 20),
       Case("drop after the final dot, nothing stored", {"drop": "data-before"},
            all_(LATER)),
       Case("drop after the final dot, message stored (RFC 1047)", {"drop": "data-after"},
            all_(LATER), duplicates=True)]
    + [Case(f"reply to {stage} slower than mail.timeout",
            {"delay": {key: DELAY}}, all_(LATER), settings=SLOW)
       for stage, key in (("MAIL", "mail"), ("RCPT", "rcpt"), ("the DATA command",
                          "data-command"))]
    # RFC 5321 4.5.3.2.6: wait 10 minutes for the reply to the final dot,
    # since giving up there sends the message twice (RFC 1047): a slow final
    # reply is waited for (mail.data_timeout), only one slower still is not.
    + [Case("reply to the final dot slower than mail.timeout", {"delay": {"data": DELAY}},
            all_(SENT), settings=SLOW),
       Case("reply to the final dot slower than mail.data_timeout (RFC 1047)",
            {"delay": {"data": DELAY}}, all_(LATER), duplicates=True,
            settings={**SLOW, "data_timeout": SLOW["timeout"]})]
    # mail.tls = true: a server that does not offer STARTTLS gets nothing,
    # not a plaintext copy; the message waits until it offers it again.
    + [Case("STARTTLS required and offered", {}, all_(SENT), server="tls"),
       Case("STARTTLS required, not offered", {"ehlo-without": ["STARTTLS"]},
            all_(LATER), server="tls"),
       Case("STARTTLS required, offered but refused (454)",
            {"starttls": "454 4.7.0 TLS not available due to local problem"}, all_(LATER),
            server="tls"),
       # 535 defers, as Postfix's smtp_sasl_auth_soft_bounce = yes (its
       # default) does: a wrong password is fixed by an operator, not the mail.
       Case("AUTH refused (535)", {"auth": "refuse"}, all_(LATER), server="auth"),
       Case("AUTH required but not offered", {"ehlo-without": ["AUTH"]}, all_(LATER),
            server="auth")]
)


def messages_for(case):
    return SLOW_MESSAGES if "delay" in case.script else MESSAGES


def describe(case, attempts):
    """The detail line of the report: the size of the case and each recipient's fate."""
    words = {SENT: "sent", LATER: "deferred, then sent", NEXT: "deferred, sent at the retry",
             FAILED: f"dead-lettered ({case.code})"}
    fates = "; ".join(f"{role}: {words[case.outcome[role]]}" for role in "abc")
    dups = ", one duplicate per attempt (RFC 1047 window)" if case.duplicates else ""
    return (f"{messages_for(case)} messages x 3 recipients (a, b, c), counted per recipient; "
            f"{attempts}; {fates}{dups}")


def expand(script, batch):
    """Role keys ("b") of a script stand for that role's address in every message."""
    script = dict(script)
    if isinstance(script.get("rcpt"), dict):
        script["rcpt"] = {addr: reply for role, reply in script["rcpt"].items()
                          for rcpts in batch for addr in rcpts if addr[0] == role}
    if "drop-rcpt" in script:
        script["drop-rcpt"] = [a for rcpts in batch for a in rcpts
                               if a[0] in script["drop-rcpt"]]
    return script


def start_server(make_smtp_server, case, pipelining, tls_context):
    script = expand(case.script, [])
    if pipelining:
        script["ehlo-with"] = ["PIPELINING"]
    kwargs = {}
    if case.server == "tls":
        kwargs["tls_context"] = tls_context
    if case.server == "auth":
        kwargs["auth"] = ("fault-user", PASSWORD)
    return fault_server(make_smtp_server, script, **kwargs)


def processor_settings(server, spool, case, tls_files, **extra):
    raw = {"mail.host": server.host, "mail.port": str(server.port),
           "mail.queue_path": spool.path, "mail.timeout": "5"}
    if case.server == "tls":
        raw.update({"mail.tls": "true", "mail.tls_cafile": tls_files["cafile"]})
    if case.server == "auth":
        raw.update({"mail.username": "fault-user", "mail.password": PASSWORD})
    raw.update({"mail." + k: v for k, v in {**case.settings, **extra}.items()})
    return parse_settings(raw)


def walk(processor, clock, settings, passes):
    """``passes`` passes, the clock moved past any retry in between."""
    for _ in range(passes):
        processor.run_once()
        clock.advance(settings.retry_max * 2)


def check_deferred(case, spool, batch):
    """While the fault lasts, each LATER recipient waits with the fault's reply recorded."""
    waiting = {}
    for state in ("new", "deferred"):
        for name in spool.names(state):
            meta = spool.read_meta(name)
            for result in meta["history"][-1]["results"]:
                if result["status"] != "sent":
                    waiting[result["recipient"]] = result
    for rcpts in batch:
        for addr in rcpts:
            if case.outcome[addr[0]] == NEXT:
                continue
            if case.outcome[addr[0]] != LATER:
                assert addr not in waiting
                continue
            result = waiting[addr]
            assert result["status"] == "temporary" and result["text"], result
            if case.code in (421, 451, 452, 552) and not case.server:
                assert result["code"] == case.code, result


def check_outcome(case, tally, before_heal, handler):
    """Every recipient ended as its case says; returns the duplicate count."""
    expected_dups = 0
    for i, rcpts in enumerate(tally.batch):
        for addr in rcpts:
            want = case.outcome[addr[0]]
            pair = tally.pair(i, addr)
            copies, early = tally.copies[pair], before_heal.get(pair, 0)
            if want == SENT:
                assert (early, copies) == (1, 1), (addr, early, copies)
            elif want == NEXT:
                assert copies == 1, (addr, copies)
            elif want == LATER:
                if case.duplicates:  # one copy per faulty attempt, then the real one
                    assert copies == early + 1 and early >= 1, (addr, early, copies)
                    expected_dups += copies - 1
                else:
                    assert (early, copies) == (0, 1), (addr, early, copies)
            else:
                assert copies == 0, addr
                dead = tally.dead[pair]
                assert dead["code"] == case.code and dead["text"], dead
                assert str(case.code) in tally.reasons[pair]
                # refused once, never asked again (not even after the heal)
                assert len(handler.refused(addr)) <= 1
    return expected_dups


# With and without PIPELINING (RFC 2920: the replies come in a batch, the
# client must still attribute each one) where it changes the conversation:
# not for session set-up (TLS, AUTH, EHLO), timeouts or message size.
MATRIX = [pytest.param(case, pipelining, id=case.name + (" pipelining" if pipelining else ""))
          for case in CASES for pipelining in (False, True)
          if not pipelining or not (case.settings or case.server or case.size
                                    or "ehlo" in case.script)]


@pytest.mark.parametrize("case, pipelining", MATRIX)
def test_fault_then_recovery(case, pipelining, tmp_path, make_smtp_server,
                             server_tls_context, tls_files):
    spool = Spool(str(tmp_path / "spool"))
    server = start_server(make_smtp_server, case, pipelining, server_tls_context)
    batch = [recipients(i) for i in range(messages_for(case))]
    handler = server.handler
    handler.script = expand({**handler.script, **case.script}, batch)
    ids, sent = queue_messages(spool, batch, case.name, case.size)
    settings = processor_settings(server, spool, case, tls_files)
    clock = Clock()
    processor = Processor(spool, None, settings, clock=clock, rand=lambda: 0.5, workers=1)

    walk(processor, clock, settings, FAULTY)
    before_heal = copies_by_pair(handler)
    check_deferred(case, spool, batch)
    rcpts_before_heal = list(handler.rcpts)
    handler.heal()
    if pipelining:
        handler.script["ehlo-with"] = ["PIPELINING"]
    walk(processor, clock, settings, 2)  # the second pass must find nothing to do

    tally = Tally(spool, handler, batch, ids)
    dups = check_outcome(case, tally, before_heal, handler)
    failed = [a for rcpts in batch for a in rcpts if case.outcome[a[0]] == FAILED]
    for addr in failed:  # after the heal, no RCPT for a refused recipient
        assert handler.rcpt_count(addr) == sum(1 for a, _ in rcpts_before_heal if a == addr)
    assert tally.lost == [] and tally.duplicated == dups
    for received in handler.messages:  # every copy is the message, byte for byte
        assert received.data == sent[message_id(received.data)]
    assert tally.waiting == []  # nothing left behind in new/, cur/ or deferred/
    assert tally.dead_count == len(failed)
    if case.server == "tls":
        assert handler.messages and all(m.tls for m in handler.messages)
    if case.server == "auth":
        assert PASSWORD not in tally.spool_text()
    record(GROUP, f"processor: {case.name}" + (" (pipelining)" if pipelining else ""),
           runs=1, messages=tally.total, delivered=tally.delivered_count,
           duplicated=tally.duplicated, lost=len(tally.lost), held=tally.dead_count,
           detail=describe(case, f"fault for {FAULTY} attempts, then healed"))


EXPIRING = [c for c in CASES if c.name in (
    "MAIL 451", "RCPT 452 to one of three", "RCPT 552 to one of three",
    "drop mid-DATA (before the final dot)", "STARTTLS required, not offered",
    "STARTTLS required, offered but refused (454)",
    "AUTH refused (535)")]


@pytest.mark.parametrize("case", EXPIRING, ids=[c.name for c in EXPIRING])
def test_fault_until_the_dead_letter_age(case, tmp_path, make_smtp_server,
                                         server_tls_context, tls_files):
    """A fault that outlasts mail.max_queue_time: dead-lettered with the last error."""
    spool = Spool(str(tmp_path / "spool"))
    server = start_server(make_smtp_server, case, False, server_tls_context)
    batch = [recipients(i) for i in range(MESSAGES)]
    handler = server.handler
    handler.script = expand(case.script, batch)
    ids, _ = queue_messages(spool, batch, case.name)
    settings = processor_settings(server, spool, case, tls_files, retry_initial="5m",
                                  retry_max="20m", max_queue_time="1h")
    clock = Clock()
    processor = Processor(spool, None, settings, clock=clock, rand=lambda: 0.5, workers=1)
    passes = 0
    while spool.names("new") + spool.names("deferred"):
        assert passes < 20, "never dead-lettered"
        processor.run_once()
        passes += 1
        due = [spool.read_meta(n)["next_attempt"] for n in spool.names("deferred")]
        clock.now = max(due, default=clock.now)
    # 5m, 10m, 20m, 20m (= 55m), 75m is past 1h; expired at the next one, 95m,
    # when two attempts in a row saw it past the limit (processor._expired)
    assert passes == 7
    handler.heal()
    walk(processor, clock, settings, 2)

    tally = Tally(spool, handler, batch, ids)
    for i, rcpts in enumerate(batch):
        for addr in rcpts:
            pair = tally.pair(i, addr)
            if case.outcome[addr[0]] == SENT:
                assert tally.copies[pair] == 1
                continue
            assert tally.copies[pair] == 0, addr  # nothing after the heal either
            assert "expired after 7 attempts over 1h 35m" in tally.reasons[pair]
            assert tally.dead[pair]["status"] == "temporary" and tally.dead[pair]["text"]
    assert tally.lost == [] and tally.duplicated == 0 and tally.waiting == []
    if case.server == "auth":
        assert PASSWORD not in tally.spool_text()
    record(GROUP, f"expiry: {case.name}", runs=1, messages=tally.total,
           delivered=tally.delivered_count, duplicated=tally.duplicated,
           lost=len(tally.lost), held=tally.dead_count,
           detail=f"{MESSAGES} messages x 3 recipients, counted per recipient; the fault "
                  "outlasts mail.max_queue_time = 1h: 7 attempts, then the recipients "
                  "not yet sent are dead-lettered with the last error")
