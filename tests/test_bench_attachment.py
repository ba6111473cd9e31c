"""bench/attachment_memory.py runs end to end (small size; figures are not asserted)."""
from __future__ import annotations

import importlib.util
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "bench" / "attachment_memory.py"


def test_attachment_memory_bench_runs_every_leg():
    spec = importlib.util.spec_from_file_location("attachment_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run(size_mb=2)
    for leg in ("builder_queue", "pyramid_mailer_queue", "processor_smtp", "builder_direct"):
        figures = results[leg]
        assert figures["peak_kib"] >= figures["baseline_kib"] > 0
        assert figures["message_mib"] >= 2.6  # base64 of 2 MiB, plus headers
    assert results["processor_smtp"]["sink"] in ("smtp-sink", "aiosmtpd")
    assert results["builder_direct"]["sink"] == results["processor_smtp"]["sink"]
