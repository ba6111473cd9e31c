"""Defects the bad-input properties found in MIME parts (attachments), each pinned by
the smallest example; the header and address ones: tests/test_badinput_found.py."""
from __future__ import annotations

import email

import pytest

from pyramid_txmail import Mail

from .badinput_support import filename_of, module_harness, read_back

pytestmark = pytest.mark.reliability


harness = module_harness("badinput-found-parts")


@pytest.mark.parametrize("filename", ['""', '"a"', "<a>", '"""', '"=?x?="'])
def test_a_filename_in_quotes_or_brackets_reads_back_with_email_default_parser(
        harness, filename):
    """Was (issue 11, finding 11: '""' arrived as an empty name): such a filename
    went as the quoted-string ``filename="\\"\\""``, right by RFC 2045, but the
    email package's get_filename() unquotes it a second time.  In RFC 2231
    form (percent-encoded) its default compat32 parser reads the name as sent.
    (Its policy.default re-quotes every parameter, so no form survives there:
    badinput_support.filename_of reads the parameter itself.)"""
    mail = Mail(subject="s", to="a@example.com", text="t")
    mail.attach(b"data", filename=filename)
    [got] = harness.send(mail, "queue").received
    [part] = [p for p in email.message_from_bytes(got.data).walk()
              if p.get_content_disposition() == "attachment"]
    assert part.get_filename() == filename
    [part] = read_back(got.data).iter_attachments()
    assert filename_of(part) == filename


@pytest.mark.parametrize("name", ['"a"', "<a>", '""'])
def test_the_outbox_and_the_preview_show_a_quoted_filename_as_sent(tmp_path, name):
    """Was (the sibling of the case above in our own readers): testing.SentMail's
    attachments and the preview page read names with get_filename() under
    policy.default, so '"a"' and '<a>' showed as 'a', and '""' as no name."""
    import html

    from pyramid_txmail.compose.message import prepare
    from pyramid_txmail.testing import SentMail

    from .test_preview import make_app, message_url, rich_message, write_eml

    mail = Mail(subject="s", to="a@example.com", text="t", sender="s@example.com")
    mail.attach(b"data", filename=name)
    [attachment] = SentMail.from_prepared(prepare(mail)).attachments
    assert attachment.filename == name
    write_eml(tmp_path / "in", "a.eml", rich_message("Quoted", attachment_name=name))
    app = make_app({"mail.preview_dirs": str(tmp_path / "in"), "pyramid.reload_all": "1"})
    assert f">{html.escape(name)}</a>" in app.get(message_url(app, "Quoted")).text
