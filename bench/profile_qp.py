"""Run ``txmail-qp`` under cProfile, worker threads included, and save the stats.

``python bench/profile_qp.py OUT.prof CONFIG [txmail-qp options]``

cProfile only sees the thread that enabled it, so every thread started
during the pass gets a profiler of its own (``threading.Thread.run`` is
wrapped; a ``run()`` called inline by the main thread is already covered)
and all of them are merged into OUT.prof at the end.
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import threading


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: profile_qp.py OUT.prof CONFIG [txmail-qp options]", file=sys.stderr)
        return 2
    out, args = argv[0], argv[1:]
    profiles, original_run = [], threading.Thread.run

    def profiled_run(self):
        if threading.current_thread() is threading.main_thread():
            return original_run(self)  # run inline (one worker): already profiled
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            original_run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run
    from pyramid_txmail.scripts import qp

    main_profile = cProfile.Profile()
    main_profile.enable()
    try:
        status = qp.main(args)
    finally:
        main_profile.disable()
    stats = pstats.Stats(main_profile)
    for profile in profiles:
        stats.add(profile)
    stats.dump_stats(out)
    return status


if __name__ == "__main__":
    sys.exit(main())
