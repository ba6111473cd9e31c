"""``config.include('pyramid_txmail.debug')`` and ``DebugMailer(path)``: the public path
of pyramid_mailer.debug's counterpart, which lives in :mod:`pyramid_txmail.dev.debug`."""
from .dev.debug import DebugMailer, debug_directory, includeme

__all__ = ["includeme", "DebugMailer", "debug_directory"]
