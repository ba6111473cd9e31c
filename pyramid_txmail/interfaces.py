"""Interfaces: repoze.sendmail's delivery and mailer, plus our events."""
from repoze.sendmail.interfaces import IMailDelivery, IMailer  # noqa: F401 (re-exported)
from zope.interface import Attribute, Interface


class IMailSettings(Interface):
    """Marker for the parsed :class:`pyramid_txmail.settings.MailSettings` utility."""


class IMailOutbox(Interface):
    """The messages that ``mail.delivery = memory`` delivered (committed), oldest first.

    Registered as a utility by that delivery; the test fixtures and the
    preview page read it.
    """

    messages = Attribute("A list of pyramid_txmail.testing.SentMail, oldest first.")

    def clear():
        """Forget every message."""


class IMailEvent(Interface):
    """Something happened to a message; notified after the commit."""

    message_id = Attribute("The message's Message-ID header value, with angle brackets.")
    fromaddr = Attribute("The envelope sender.")
    toaddrs = Attribute("The envelope recipients (a tuple).")
    results = Attribute("Per-recipient RecipientResult objects (empty for MailQueued).")
    transaction_manager = Attribute("The manager whose new transaction the subscriber runs in.")


class IMailQueued(IMailEvent):
    """The message was committed into the durable spool."""


class IMailSent(IMailEvent):
    """Every remaining recipient accepted the message."""


class IMailDeferred(IMailEvent):
    """Some recipients failed temporarily; they will be retried."""


class IMailFailed(IMailEvent):
    """Some recipients failed permanently (or the message expired); dead-lettered."""
