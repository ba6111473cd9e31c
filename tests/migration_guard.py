"""Record every use of pyramid_mailer's own mailers in a switched project's process.

Copied as ``sitecustomize.py`` into the harness directory that heads the subprocess's
``PYTHONPATH``, so Python imports it at start-up in every process of a run (the
project's pytest, a driver, a console script).  A switched project may still build
pyramid_mailer ``Message`` objects; it must not send, include or look up a mailer
through pyramid_mailer.  Each such call appends one line to ``$MIGRATION_GUARD_LOG``
and then proceeds unchanged, so the project's own behaviour (and its tests' outcome)
is not altered by the guard: the harness reads the log afterwards.

Without ``MIGRATION_GUARD_LOG`` (the "before" run on pyramid_mailer) it does nothing.
"""
import functools
import os

LOG = os.environ.get("MIGRATION_GUARD_LOG")

SEND_METHODS = ("send", "send_immediately", "send_to_queue", "send_sendmail",
                "send_immediately_sendmail")


def _record(what):
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"{what} (pid {os.getpid()})\n")


def _watch(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return

    @functools.wraps(original)
    def watched(*args, **kwargs):
        _record(label)
        return original(*args, **kwargs)

    setattr(owner, name, watched)


def install():
    try:
        import pyramid_mailer
        import pyramid_mailer.debug
        import pyramid_mailer.mailer
        import pyramid_mailer.testing
    except ImportError:  # not installed: nothing of it can be used
        return
    for module in (pyramid_mailer, pyramid_mailer.testing, pyramid_mailer.debug):
        _watch(module, "includeme", f"config.include({module.__name__!r})")
    _watch(pyramid_mailer, "get_mailer", "pyramid_mailer.get_mailer")
    for cls in (pyramid_mailer.mailer.Mailer, pyramid_mailer.mailer.DummyMailer,
                pyramid_mailer.mailer.DebugMailer):
        for name in SEND_METHODS:
            _watch(cls, name, f"pyramid_mailer.mailer.{cls.__name__}.{name}")


if LOG:
    install()
