"""pyramid_mailer's mailer API around ours, for apps that switch by changing the include.

pyramid_mailer users build mailers with ``Mailer.from_settings(settings, prefix)`` or
``mailer_factory_from_settings``, rebind them with ``mailer.bind(transaction_manager=...)``,
look them up with ``registry.getUtility(IMailer)`` and, in tests, read
``mailer.outbox`` / ``mailer.queue``.  This module gives :class:`~pyramid_txmail.Mailer`
those (as :class:`PyramidMailerAPI`) without changing what sending means: the mail still
goes out only when its transaction commits.

pyramid_mailer is not a dependency: its ``IMailer`` is registered only when it is
installed (so plugins that still call ``pyramid_mailer.get_mailer(request)`` get our
mailer instead of a ComponentLookupError, or pyramid_mailer's own SMTP mailer).
"""
from __future__ import annotations

import copy
import dataclasses

from .interfaces import IMailer as _RepozeIMailer

try:  # optional: only to be found by code that still imports pyramid_mailer
    from pyramid_mailer.interfaces import IMailer as PyramidMailerIMailer
except ImportError:  # pragma: no cover - pyramid_mailer is in the testing extra
    PyramidMailerIMailer = None

_BIND_OPTIONS = ("default_sender", "transaction_manager")


def mailer_interfaces():
    """The interfaces pyramid_mailer users look a mailer up by: pyramid_mailer's
    ``IMailer`` (when installed) and ``pyramid_txmail.interfaces.IMailer`` (what a
    rewritten ``from pyramid_mailer.interfaces import IMailer`` imports)."""
    return tuple(i for i in (PyramidMailerIMailer, _RepozeIMailer) if i is not None)


def register_mailer(registry, mailer):
    """Register ``mailer`` (the include's own) under pyramid_mailer's ``IMailer``, if
    pyramid_mailer is installed, marked as ours so :func:`registered_mailer` tells it
    from one a test registered."""
    mailer.registered_by_include = True
    if PyramidMailerIMailer is not None:
        registry.registerUtility(mailer, PyramidMailerIMailer)


def registered_mailer(registry):
    """A mailer someone else registered under ``IMailer`` (a test's ``DummyMailer``,
    as pyramid_mailer's ``get_mailer`` would find it), or ``None``."""
    for iface in mailer_interfaces():
        found = registry.queryUtility(iface)
        if found is not None and not getattr(found, "registered_by_include", False):
            return found
    return None


def mailer_factory_from_settings(settings, prefix="mail."):
    """pyramid_mailer's factory: a mailer for the keys under ``prefix``, bound to the
    thread-local ``transaction.manager`` (no registry, so no events are notified)."""
    from . import make_delivery
    from .settings import parse_settings

    return make_delivery(parse_settings(settings, prefix)).bind()


def _check_bind_options(kw):
    unknown = sorted(set(kw) - set(_BIND_OPTIONS))
    if unknown:  # pyramid_mailer's own check and message
        raise ValueError("invalid options: " + ", ".join(unknown))


class PyramidMailerAPI:
    """What pyramid_mailer's ``Mailer`` has besides sending (mixed into ours)."""

    @classmethod
    def from_settings(cls, settings, prefix="mail."):
        """pyramid_mailer's ``Mailer.from_settings``: see :func:`mailer_factory_from_settings`."""
        return mailer_factory_from_settings(settings, prefix)

    def bind(self, **kw):
        """A mailer on the same delivery with another ``transaction_manager`` and/or
        ``default_sender`` (pyramid_mailer's ``Mailer.bind``)."""
        _check_bind_options(kw)
        delivery = self.delivery
        if kw.get("default_sender"):
            from .settings import _address

            delivery = copy.copy(delivery)
            delivery.settings = dataclasses.replace(
                delivery.settings, default_sender=_address(kw["default_sender"]))
        manager = kw.get("transaction_manager") or self.transaction_manager
        return type(self)(delivery, manager, self.request)

    def _memory(self, what):
        from .devdelivery import MemoryOutbox

        outbox = self.delivery.outbox
        if not isinstance(outbox, MemoryOutbox):
            raise AttributeError(
                f"mailer.{what} exists with memory delivery only (mail.delivery = memory, "
                f"or config.include('pyramid_txmail.testing')); this mailer's delivery is "
                f"{self.delivery.settings.delivery!r}")
        return outbox

    @property
    def outbox(self):
        """The committed messages (pyramid_mailer's ``DummyMailer.outbox``): an
        :class:`~pyramid_txmail.testing.Outbox` of ``SentMail``, filled at the commit."""
        return self._memory("outbox")

    @outbox.setter
    def outbox(self, value):
        _reset(self._memory("outbox"), value, "outbox")

    @property
    def queue(self):
        """The messages ``send_to_queue`` committed (``DummyMailer.queue``)."""
        return self._memory("queue").queue

    @queue.setter
    def queue(self, value):
        _reset(self._memory("queue").queue, value, "queue")


def _reset(outbox, value, what):
    """``mailer.outbox = []`` (as tests of DummyMailer do) empties it."""
    if list(value) != []:
        raise TypeError(f"mailer.{what} can only be emptied (mailer.{what} = [] or "
                        f"mailer.{what}.clear()); it is filled by committed transactions")
    outbox.clear()
