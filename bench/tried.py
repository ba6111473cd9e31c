"""What was tried for each target, written by the developers (not measured).

``bench/run.py`` prints, under RESULTS.md's Targets table, the entry of every
target this run missed: what limits it (with a pointer to the profile section
the run wrote) and what was tried, so that a missed target is never a bare
"no".  Keys are a part of the target's text; an entry names the commits or
branches so that the history can be followed.  Keep these honest: when a change
lands that moves a figure, say so here.
"""
from __future__ import annotations

TRIED = {
    "durable enqueue": (
        "What limits it: the disk.  Our commit makes three fsyncs -- the message file, "
        "`prepared/` at the vote, `new/` at the finish -- where the floor makes two (the "
        "file and `new/`).  The fsync of `prepared/` makes the vote durable before the "
        "database commits: with the database on another host, a power loss between its "
        "commit and our finish could otherwise bring a committed message back in `tmp/`, "
        "which reads as an unfinished vote and is deleted (added after an outside probe "
        "found it).  So a two-phase commit that is durable cannot come within 1.25x of a "
        "two-fsync floor on a disk where a directory fsync is a fifth of the floor; "
        "concurrent commits share each directory fsync (group commit), see the concurrent "
        "section's fsyncs per request.  The CPU part is small: `send()` about 90-130 us "
        "(\"Why durable enqueue is above the floor\" below).  On a slow, loaded disk "
        "(floor 7,394 us in an earlier run) the ratio was 1.20x.\n\n"
        "Tried: the enqueue fast path (the header block validated and serialized without "
        "the email package's header registry: `send()` 5.3x less CPU); the group commit; "
        "prepare(Mail) through the fast path; one write per message instead of a buffered "
        "file, the Date stamp made once a second, a lone committer's group commit without "
        "a hand-off, the directories' paths joined once (enqfast: send() and the commit's "
        "CPU a third lower for every input kind)."),
    "8 concurrent requests: pyramid_txmail >= 1.2x": (
        "What limits it: the app is CPU-bound under the interpreter lock (see \"Why: "
        "where the interpreter lock is held\").  The largest single share is the view "
        "building its stdlib `EmailMessage` (about 400 us of CPU, a third of the GIL-held "
        "samples), which is the application's code and the same for any mail library; "
        "`request.mailer.send(msg)` is under 10%.  The same mail built with "
        "`pyramid_txmail.builder.Mail` (about 25 us) is the `txmail-mail` row: its "
        "figures are given beside the target.\n\n"
        "Tried: the enqueue fast path (send() 5.3x less CPU), the group commit (0.6 "
        "directory fsyncs per request instead of 1), prepare(Mail) through the fast path; "
        "what remains is the stdlib message object and Pyramid/pyramid_tm/waitress per "
        "request."),
    "8 concurrent requests: the mail costs": (
        "What limits it: as above -- the floor's view writes prepared bytes and builds no "
        "message, while ours builds a stdlib `EmailMessage` in the view; the disk work "
        "per request is the same or less (fsyncs/request in the table).  See the "
        "`txmail-mail` row for the cost with our own builder.\n\n"
        "Tried: as above."),
    "the daemon >=": (
        "What limits it: CPU (in the run this entry was written after: 4.71x; 390 us of "
        "daemon CPU per message, the ceiling on 2 cores 6.3x, 10x needing 40% less CPU).  Client and sink share 2 cores; the section's \"how far 10x "
        "is\" paragraph gives the ceiling (2 cores / CPU per message of client + sink) and "
        "what fraction of it the daemon reaches.  See the drain profile below.\n\n"
        "Tried: several processes by default (`mail.processes`), each child taking its "
        "own share of `new/` first (no claim races), pipelined reused connections, "
        "retires handed to reapers in batches, one read per message."),
    "drain with default settings": (
        "What limits it: as for the daemon; the cron pass also pays its start-up "
        "(0.09 s with `--no-app`).\n\n"
        "Tried: as for the daemon; lazy imports and `mail.qp_events = none` for the "
        "start-up."),
    "one worker >=": (
        "What limits it: one Python thread's CPU per message (claim, read, SMTP "
        "transaction, retire), against smtp-source's C.  See the drain profile.\n\n"
        "Tried: one read per message, batched retires, no work for first-attempt "
        "successes."),
    "enqueue's cost in the app's transaction": (
        "What limits it: the outbox row is a wider row than the comparison's (the "
        "envelope, the state columns, 5 indexes on SQLite with AUTOINCREMENT, which the "
        "poll watcher relies on so that ids are never reused), plus enqueue()'s own "
        "Python (finding the header block and the Message-ID, the envelope check).  On "
        "PostgreSQL the NOTIFY costs 15-30 us wherever it goes.  See the enqueue profile "
        "in the SQL section.\n\n"
        "Tried: precompiled statements; Core constructs through the application's "
        "connection (a bare-cursor path was faster but bypassed SQLAlchemy's connection "
        "state, and an outside probe broke it: removed); literal constants and no "
        "RETURNING unless it carries the NOTIFY; one NOTIFY per transaction; bytes.find "
        "instead of regular expressions for the header block (sqlenq2)."),
    "PostgreSQL outbox with 3 txmail-qp": (
        "What limits it: 2 cores shared by PostgreSQL, the sink and 3 txmail-qp processes "
        "(each with its workers): the outbox costs about 1.8x the spool's CPU per message "
        "(claims, retires and their commits on the server), so 3 processes only add "
        "contention on this machine -- one process reaches about the spool's rate.  See "
        "the PostgreSQL drain profile.  On a machine where the database has cores of its "
        "own, the figure would be different; this run cannot show it.\n\n"
        "Tried: claims in batches and ahead of need, grouped retires (one statement for "
        "many messages), precompiled claim statements, holds() from the lease renewer, "
        "catalog-based table checks at start-up."),
    "each additional message costs the same": (
        "What limits it: nothing by design -- the spool is listed in sorted batches and "
        "no pass scans the whole queue, so a message costs the same at any depth (the CPU "
        "rows say so); the wall-clock rows also measure the machine's other load, and "
        "the page cache once the queue outgrows it.  See the cost growth table.\n\n"
        "Tried: batched listing (Spool.iter_names), a deferred/ index for due times."),
    "peak RSS flat": (
        "What limits it: the listing batch and the workers' buffers, which do not grow "
        "with the queue; a small growth is the allocator's.  See the cost growth table."),
    "peak memory for a": (
        "What limits it: nothing is read whole -- attachments are encoded block by block "
        "on the way to the spool, the socket and the outbox.  See the attachment table."),
    "claims/s flat": (
        "What limits it: the claim statement's plan over the outbox's index on state and "
        "due time; the table gives its time on the server at each size."),
}


def entry(target_text):
    """The entry for a target's text, or None."""
    for key, text in TRIED.items():
        if key in target_text:
            return text
    return None


def markdown(missed):
    """The section for the missed targets (``Target`` objects), or ``[]`` when none."""
    if not missed:
        return []
    out = ["", "## What limits each missed target, and what was tried", "",
           "Written by the developers (bench/tried.py), not measured in this run; the "
           "figures are in the sections below."]
    for target in missed:
        out += ["", f"### {target.text}", "",
                entry(target.text) or "Nothing recorded yet: add an entry to bench/tried.py."]
    return out
