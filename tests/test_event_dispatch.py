"""Events nobody subscribes to cost no transaction; subscribed ones still run in one of their own."""
import transaction
from pyramid.config import Configurator
from zope.interface import Interface

from pyramid_txmail.events import MailQueued, MailSent, dispatch, subscribed
from pyramid_txmail.interfaces import IMailEvent, IMailSent


class Begins:
    """A transaction synchronizer counting the transactions begun on a manager."""

    def __init__(self, tm):
        self.count = 0
        tm.registerSynch(self)

    def newTransaction(self, txn):
        self.count += 1

    def beforeCompletion(self, txn):
        pass

    def afterCompletion(self, txn):
        pass


def events():
    return [MailQueued("<q@example.org>", "a@example.org", ["b@example.org"]),
            MailSent("<s@example.org>", "a@example.org", ["b@example.org"])]


def registry_with(*subscriptions):
    config = Configurator()
    for subscriber, iface in subscriptions:
        config.add_subscriber(subscriber, iface)
    config.commit()
    return config.registry


def test_no_subscriber_no_transaction():
    tm = transaction.TransactionManager(explicit=True)
    begins = Begins(tm)
    dispatch(registry_with(), events(), tm)
    assert begins.count == 0


def test_a_subscriber_gets_its_event_in_a_transaction_of_its_own_and_only_its_own():
    tm = transaction.TransactionManager(explicit=True)
    begins = Begins(tm)
    seen = []
    registry = registry_with((lambda event: seen.append((event, tm.get())), IMailSent))
    dispatch(registry, events(), tm)
    assert [type(event) for event, _ in seen] == [MailSent]
    assert begins.count == 1


def test_base_interface_subscribers_count():
    for iface in (IMailEvent, Interface):
        registry = registry_with((lambda event: None, iface))
        assert [type(e) for e in subscribed(registry, events())] == [MailQueued, MailSent]
