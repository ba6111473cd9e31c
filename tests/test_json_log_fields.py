"""Every delivery outcome line of a JSON log carries the same fields (issue 15, outside
probe finding 8: a message accepted at its first attempt logged "sent" without
``attempt``, since nothing is recorded for it)."""
from __future__ import annotations

import json

from .claims_support import QP, make_spool, run
from .faultserver import fault_server

FIELDS = {"message_id", "attempt", "recipient", "code", "relay"}


def test_sent_deferred_and_dead_letter_lines_all_carry_the_fields(tmp_path,
                                                                   make_smtp_server):
    server = fault_server(make_smtp_server, {"rcpt": {
        "later@example.org": "450 4.2.0 busy", "gone@example.org": "550 5.1.1 no such user"}})
    spool = make_spool(tmp_path)
    for i, to in enumerate(["ok@example.org", "later@example.org", "gone@example.org"]):
        data = (f"From: s@example.org\nTo: {to}\nSubject: s\nMessage-ID: <m{i}@example.org>"
                "\n\nbody\n").encode()
        spool.commit_tmp([spool.write_tmp("s@example.org", [to], data)])
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool.path}\n"
                   f"mail.host = {server.host}\nmail.port = {server.port}\n"
                   "mail.timeout = 10\nmail.log_format = json\n")
    done = run(QP, str(ini), "--no-app", "-v")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    outcomes = {}
    for record in records:
        for word in ("sent", "deferred", "dead letter"):
            if record["message"].startswith(word + " <m"):
                outcomes[word] = record
    assert set(outcomes) == {"sent", "deferred", "dead letter"}, records
    for word, record in outcomes.items():
        assert FIELDS <= set(record), (word, record)
        assert record["attempt"] == 1, (word, record)
        assert record["relay"].endswith(str(server.port)) or str(server.port) in str(
            record["relay"]), record
    assert outcomes["sent"]["code"] == 250 and outcomes["sent"]["recipient"] == "ok@example.org"
    assert outcomes["deferred"]["code"] == 450
    assert outcomes["dead letter"]["code"] == 550
