"""Every ``mail.*`` key against hostile values: a ConfigurationError naming it, or a sane value.

Probe 11b (findings 5 and 8): ``mail.retry_initial = 2h`` without
``mail.retry_max`` raised KeyError('retry_max') from a cross-check reading a
key that was not set; ``settings={"mail.timeout": 10**400}`` raised
OverflowError; ``0.0000001`` was a valid timeout and poll interval (a busy
loop); ``'٣'``, ``'３'`` and ``'1_000'`` were numbers.  The sweep feeds every
key every such value, as text and as Python objects, and allows exactly two
outcomes.
"""
from __future__ import annotations

import math

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_txmail.settings import MIN_DURATION, SETTINGS, MailSettings, parse_settings

HOSTILE = ["nan", "inf", "-inf", "0", "-1", "", " ", "9" * 400, "1e3", "0.0000001", "1_000",
           "٣", "３", "1.5", "0x10", "30 s", "5m5s", "99999999999", "366d", "1e-5", "NaN s",
           "1,5", "\x00", "+5", "1e400", float("nan"), float("inf"), -1, 0, 10 ** 400,
           1e-9, True, None, b"30", [], ["a"], object()]
NUMERIC = {s.name for s in SETTINGS if isinstance(s.default, (int, float))
           and not isinstance(s.default, bool)} | {"port", "data_timeout", "rate_limit"}


def _refuses_or_parses(name, value):
    """One (key, value) cell: a ConfigurationError naming the key, or a sane value."""
    key = f"mail.{name}"
    try:
        settings = parse_settings({key: value})
    except ConfigurationError as exc:
        assert str(exc).startswith(f"mail.{name}") or key in str(exc), str(exc)
        return
    parsed = getattr(settings, name)
    if name in NUMERIC and parsed is not None:
        assert math.isfinite(parsed)
        if isinstance(parsed, float) and name != "rate_limit":
            assert parsed >= MIN_DURATION, (value, parsed)


@pytest.mark.parametrize("name", [s.name for s in SETTINGS])
def test_every_key_refuses_or_parses_every_hostile_value(name):
    """Every value of HOSTILE for this key, in one test item per key.

    The whole matrix runs (51 keys x 37 values); one item per key instead of
    one per cell because a cell's own work is ~0.1 ms and pytest's per-item
    bookkeeping was ~20x that (1,887 items).  Every failing value is listed,
    with what it raised (any exception other than a ConfigurationError is one).
    """
    failures = []
    for value in HOSTILE:
        try:
            _refuses_or_parses(name, value)
        except Exception as exc:  # noqa: BLE001 -- reported, with its type, below
            failures.append(f"mail.{name} = {repr(value)[:40]}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", sorted(NUMERIC))
@pytest.mark.parametrize("value", ["٣", "３", "1_000", "１０"])
def test_numbers_are_ascii_digits_only(name, value):
    with pytest.raises(ConfigurationError, match=f"^mail.{name} = "):
        parse_settings({f"mail.{name}": value})


@pytest.mark.parametrize("name, value", [("timeout", "0.0000001"), ("data_timeout", "0.0000001"),
                                         ("direct_timeout", "0.0001"),
                                         ("retry_initial", "0.0000001"),
                                         ("poll_interval", "0.001"),
                                         ("commit_grace", "59"), ("claim_timeout", "0.5")])
def test_tiny_durations_are_refused_with_the_floor(name, value):
    with pytest.raises(ConfigurationError, match=f"^mail.{name} = .*at least"):
        parse_settings({f"mail.{name}": value, "mail.timeout": "0.01"}
                       if name == "data_timeout" else {f"mail.{name}": value})


def test_the_floors_themselves_are_accepted():
    settings = parse_settings({"mail.timeout": "0.001", "mail.poll_interval": "0.01",
                               "mail.commit_grace": "1m", "mail.retry_initial": "0.001",
                               "mail.direct_timeout": "0.001"})
    assert (settings.timeout, settings.poll_interval, settings.commit_grace) == \
        (0.001, 0.01, 60.0)


@pytest.mark.parametrize("name", ["timeout", "rate_limit", "workers", "port", "retry_max"])
def test_a_python_int_beyond_float_is_a_configuration_error(name):
    with pytest.raises(ConfigurationError, match=f"^mail.{name} = .*characters"):
        parse_settings({f"mail.{name}": 10 ** 400})


def test_a_cross_check_with_its_other_key_unset_blames_the_key_that_was_set():
    with pytest.raises(ConfigurationError, match=r"^mail.retry_initial = 7200.0: longer than "
                       r"mail.retry_max \(4000s, the default\)"):
        parse_settings({"mail.retry_initial": "2h"})
    with pytest.raises(ConfigurationError, match=r"^mail.retry_max = 60.0: .*retry_initial "
                       r"\(300s\)"):
        parse_settings({"mail.retry_max": "1m"})
    with pytest.raises(ConfigurationError, match=r"^mail.timeout = 1200.0: longer than "
                       r"mail.data_timeout \(600s, the default\)"):
        parse_settings({"mail.timeout": "20m"})
    assert parse_settings({"mail.retry_initial": "2h", "mail.retry_max": "3h"}).retry_max \
        == 3 * 3600
    assert MailSettings.retry_max == 4000.0
