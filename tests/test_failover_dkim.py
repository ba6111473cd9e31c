"""Failover per message with DKIM signing: the fallback gets one signature that
verifies (each relay's transaction signs the bytes it sends, once)."""
from __future__ import annotations

from pyramid_txmail.relay.dkim import DKIMSigner, DomainKey, load_key

from .dkim_support import KeyRecords, verify, write_key
from .test_failover import address, relay, stored, transport_for

FROM = "shop@example.com"


def test_the_fallback_copy_is_signed_once_and_verifies(make_smtp_server, tmp_path):
    path, public = write_key(tmp_path)
    key, bits = load_key(path)
    signer = DKIMSigner({"example.com": DomainKey("example.com", "s1", path, bits, key)})
    primary = relay(make_smtp_server, {"data": "451 4.3.0 scanner unavailable"})
    fallback = relay(make_smtp_server)
    data = (f"From: {FROM}\r\nTo: bob@example.org\r\nSubject: signed\r\n"
            "Message-ID: <signed-failover@example.com>\r\n\r\nPay 10 EUR\r\n").encode()
    with transport_for(primary, fallback, dkim=signer) as transport:
        result = transport.deliver(FROM, ["bob@example.org"], data)
    assert result.ok and result.results[0].relay == address(fallback)
    assert stored(primary) == {}
    [got] = fallback.messages
    assert got.data.count(b"DKIM-Signature:") == 1
    ok, why = verify(got.data, KeyRecords().publish("s1", "example.com", public))
    assert ok, why
