"""``debugtoolbar.includes = pyramid_txmail.toolbar``: the public path of the debug
toolbar's mail panel, which lives in :mod:`pyramid_txmail.dev.toolbar`."""
from .dev.toolbar import MailPanel, includeme

__all__ = ["includeme", "MailPanel"]
