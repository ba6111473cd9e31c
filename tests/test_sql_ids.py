"""Outbox ids are parsed once: ASCII digits within the id column's range.
Anything else (a 20-digit number, full-width digits, a sign) names no row by
id -- it is looked up as a Message-ID, else "not found" -- and never reaches
the database as an out-of-range parameter (PostgreSQL's DataError)."""
from __future__ import annotations

import pytest

from pyramid_txmail.queue.sql.errors import NotFound
from pyramid_txmail.queue.sql.schema import MAX_ID, parse_id

from .sql_support import db_url, message, put, queue  # noqa: F401


@pytest.mark.parametrize("text, expected", [
    ("1", 1), ("007", 7), (str(MAX_ID), MAX_ID), (str(MAX_ID + 1), None),
    ("99999999999999999999", None), ("０１", None), ("١", None), ("+1", None), ("-1", None),
    ("0", None), (" 1", None), ("1_000", None), ("", None), ("x1", None), ("²", None)])
def test_parse_id_takes_ascii_digits_in_range_only(text, expected):
    assert parse_id(text) == expected


@pytest.mark.parametrize("ident", ["99999999999999999999", str(MAX_ID + 1), "０１", "new/０１",
                                   "failed/99999999999999999999"])
def test_find_says_not_found_for_an_id_out_of_range_or_not_ascii(queue, ident):
    put(queue, message())  # row 1: "０１" must not find it
    with pytest.raises(NotFound) as info:
        queue.find(ident)
    assert repr(ident.strip()) in str(info.value)


def test_an_id_that_is_a_message_id_is_still_found(queue):
    put(queue, message(message_id="<99999999999999999999>"))
    assert queue.find("99999999999999999999").message_id == "<99999999999999999999>"
