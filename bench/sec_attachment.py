"""Peak memory for a large attachment (issue 5, point 3).

"Attachments are streamed from disk to the spool and to the SMTP socket:
peak resident memory for a 50 MB attachment stays within 1.5x the message
size above the process baseline."  :mod:`attachment_memory` measures each
leg in a fresh child process (builder + queue delivery; the processor to a
sink; direct delivery to a sink) and pyramid_mailer's Message +
send_to_queue as the anchor.
"""
from __future__ import annotations

import attachment_memory
from harness import SectionResult, Target, table

TARGET = 1.5
LEGS = (("builder_queue", "Mail + queue delivery (commit -> spool)"),
        ("processor_smtp", "txmail processor: spool -> SMTP sink"),
        ("builder_direct", "Mail + direct delivery: file -> SMTP sink"),
        ("pyramid_mailer_queue", "pyramid_mailer Message + send_to_queue (anchor)"))


def run(ctx):
    size = 2 if ctx.options.quick else 50
    found = attachment_memory.run(size)
    rows = []
    for key, label in LEGS:
        leg = found[key]
        rows.append((label, f"{leg['above_baseline_mib']:.1f}", f"{leg['message_mib']:.1f}",
                     f"{leg['ratio_to_message']:.2f}x"))
    worst = max(found[key]["ratio_to_message"] for key, _ in LEGS[:3])
    markdown = "\n\n".join([
        f"A {size} MiB random attachment (base64 in the message); each leg in a fresh "
        "process, peak resident memory (high-water mark) above that process's baseline.",
        table(("leg", "peak above baseline MiB", "message MiB", "x message"), rows)])
    target = Target(f"peak memory for a {size} MiB attachment <= {TARGET}x the message size "
                    "(every txmail leg)", worst <= TARGET, f"worst txmail leg {worst:.2f}x; "
                    f"pyramid_mailer {found['pyramid_mailer_queue']['ratio_to_message']:.2f}x")
    lines = [f"{label}: {above} MiB above baseline ({ratio})" for label, above, _, ratio in rows]
    return SectionResult(f"Attachment memory: {size} MiB", markdown, lines, [target])
