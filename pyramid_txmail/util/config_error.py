"""Pyramid's ConfigurationError, imported only when one is raised or caught.

``pyramid.exceptions`` imports ``pyramid.httpexceptions``, which pulls in WebOb
and, through ``pyramid.path``, pkg_resources: about 0.1 s, more than the rest of a
``txmail-qp`` cron pass over an empty spool.  The settings and the console scripts
raise and catch pyramid's class (applications catch it around ``config.include``),
but a run that finds nothing wrong never needs to import it.
"""
from __future__ import annotations

import sys


def configuration_error(message):
    """A :class:`pyramid.exceptions.ConfigurationError` to raise."""
    from pyramid.exceptions import ConfigurationError

    return ConfigurationError(message)


def is_configuration_error(exc):
    """Whether ``exc`` is pyramid's ConfigurationError, without importing it: if
    ``pyramid.exceptions`` was never imported, nothing can have raised its class."""
    module = sys.modules.get("pyramid.exceptions")
    return module is not None and isinstance(exc, module.ConfigurationError)
