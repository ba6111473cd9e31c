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

from ..interfaces import IMailer as _RepozeIMailer
from ..util.printable import get_logger

try:  # optional: only to be found by code that still imports pyramid_mailer
    from pyramid_mailer.interfaces import IMailer as PyramidMailerIMailer
except ImportError:  # pragma: no cover - pyramid_mailer is in the testing extra
    PyramidMailerIMailer = None

log = get_logger("pyramid_txmail")

_BIND_OPTIONS = ("default_sender", "transaction_manager")


#: What ``config.include("pyramid_mailer")`` runs (pyramid's include spec).
PYRAMID_MAILER_INCLUDE = "pyramid_mailer:includeme"


def take_pyramid_mailer_include(config):
    """Make a later ``config.include("pyramid_mailer")`` -- a plugin's, which the app
    cannot edit -- a no-op: we already provide what it would add (``request.mailer``
    and the ``IMailer`` utility), and both adding them is Pyramid's
    ConfigurationConflictError on ``('request extensions', 'mailer')``.

    Pyramid runs each include spec once per configuration (``ActionState.processSpec``),
    so marking pyramid_mailer's as done is all it takes.  If pyramid_mailer was
    included *before* us, its request method is already registered: a clear error
    says to include pyramid_txmail first.
    """
    if PyramidMailerIMailer is None:  # not installed: nobody can include it
        return
    if config.action_state.processSpec(PYRAMID_MAILER_INCLUDE):
        # DEBUG: this runs in every app (and txmail-qp child) with pyramid_mailer
        # installed, whether or not anything includes it later.
        log.debug(
            "pyramid_txmail provides request.mailer and pyramid_mailer's IMailer: a later "
            "config.include('pyramid_mailer') (e.g. by a plugin) will be skipped")
        return
    from pyramid.exceptions import ConfigurationError

    raise ConfigurationError(
        "config.include('pyramid_mailer') ran before config.include('pyramid_txmail') "
        "(directly, in pyramid.includes, or in a plugin's includeme), and both add "
        "request.mailer: include pyramid_txmail first -- put it before the plugin in "
        "pyramid.includes or call config.include('pyramid_txmail') before including "
        "the plugin -- and the plugin's include of pyramid_mailer is then skipped "
        "(its get_mailer(request) gets pyramid_txmail's mailer)")


def warn_implied_queue(raw, prefix, settings):
    """A WARNING when ``send()`` queues only because ``mail.queue_path`` is set.

    pyramid_mailer's ``send()`` sent directly whatever ``mail.queue_path`` said;
    an app switched from it keeps its ini and would otherwise fill a spool that
    no ``txmail-qp`` empties, with an INFO "queued" line as its only trace.
    """
    if settings.delivery != "queue" or raw.get(prefix + "delivery"):
        return
    if getattr(settings, "processor", "external") == "thread":
        return  # a thread of the web process empties it (mail.processor = thread)
    log.warning(
        "%sdelivery is not set and %squeue_path is (%s), so send() queues mail in that "
        "spool and nothing is sent until `txmail-qp CONFIG.ini` runs on it. Set "
        "%sdelivery = queue to say that is intended (and run txmail-qp), or "
        "%sdelivery = direct to send after each commit as pyramid_mailer's send() did",
        prefix, prefix, settings.queue_path, prefix, prefix)


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
    from .delivery import make_delivery
    from ..settings import parse_settings, settings_prefix

    parsed = parse_settings(settings, prefix)
    warn_implied_queue(settings, settings_prefix(settings, prefix), parsed)
    return make_delivery(parsed).bind()


#: pyramid_mailer's ``Mailer(**kw)`` keywords that are settings (``mail.`` + name).
KEYWORD_SETTINGS = ("host", "port", "username", "password", "tls", "ssl", "keyfile",
                    "certfile", "queue_path", "default_sender", "debug", "sendmail_app",
                    "sendmail_template", "timeout", "delivery")


def keyword_delivery(options):
    """The delivery of pyramid_mailer's keyword construction, ``Mailer(host=...,
    port=...)``: the keywords are read as the ``mail.*`` settings of the same names
    (``transaction_manager`` is the thread-local one unless given to ``bind``).
    pyramid_mailer's ``smtp_mailer`` / ``queue_delivery`` objects have no
    counterpart: a TypeError names :meth:`Mailer.from_settings` instead."""
    from .delivery import make_delivery
    from ..settings import parse_settings

    unknown = sorted(set(options) - set(KEYWORD_SETTINGS))
    if unknown:
        raise TypeError(
            f"Mailer() got unexpected keyword argument(s) {', '.join(unknown)}: it takes "
            f"the mail settings as keywords ({', '.join(KEYWORD_SETTINGS)}), as "
            "pyramid_mailer's Mailer(host=..., port=...) does; build one from an ini's "
            "settings with Mailer.from_settings(settings, prefix='mail.'), or use "
            "request.mailer / pyramid_txmail.get_mailer(registry)")
    settings = {"mail." + key: _setting_text(value) for key, value in options.items()
                if value is not None}

    parsed = parse_settings(settings, "mail.")
    warn_implied_queue(settings, "mail.", parsed)
    return make_delivery(parsed)


def _setting_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
            from ..settings import _address

            delivery = copy.copy(delivery)
            delivery.settings = dataclasses.replace(
                delivery.settings, default_sender=_address(kw["default_sender"]))
        manager = kw.get("transaction_manager") or self.transaction_manager
        return type(self)(delivery, manager, self.request,
                          session=getattr(self, "session", None))

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
