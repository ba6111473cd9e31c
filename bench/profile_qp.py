"""Run ``txmail-qp`` under cProfile, one profile per thread, and save them.

``python bench/profile_qp.py OUT_DIR CONFIG [txmail-qp options]``

cProfile only sees the thread that enabled it, so every thread started
during the pass gets a profiler of its own (``threading.Thread.run`` is
wrapped; a ``run()`` called inline by the main thread is already covered).
Each thread's profile is saved as ``OUT_DIR/NN-THREADNAME.prof``, so that
the thread doing the sending can be told from helpers that wait or reap.
"""
from __future__ import annotations

import cProfile
import os
import re
import sys
import threading


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: profile_qp.py OUT_DIR CONFIG [txmail-qp options]", file=sys.stderr)
        return 2
    out, args = argv[0], argv[1:]
    os.makedirs(out, exist_ok=True)
    profiles, original_run = [], threading.Thread.run

    def profiled_run(self):
        if threading.current_thread() is threading.main_thread():
            return original_run(self)  # run inline (one worker): already profiled
        profile = cProfile.Profile()
        profiles.append((self.name, profile))
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
    for i, (name, profile) in enumerate([("main", main_profile), *profiles]):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        profile.dump_stats(os.path.join(out, f"{i:02d}-{safe}.prof"))
    return status


if __name__ == "__main__":
    sys.exit(main())
