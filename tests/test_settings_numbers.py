"""Numeric ``mail.*`` settings: no NaN, no infinity, no value quietly changed (issue 11, 10a/b).

Every number is either used as given or refused at startup with a
ConfigurationError naming the key: ``nan`` compares false with everything
(``rate_limit = nan`` meant no limit at all), ``inf`` and huge durations
overflow the socket and lock timeouts they end up in, and a
``data_timeout`` shorter than ``timeout`` was raised to it without a word.
"""
from __future__ import annotations

import math

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_txmail.settings import SETTINGS, parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport

DURATIONS = [s.name for s in SETTINGS if s.default is not None
             and isinstance(s.default, float)] + ["data_timeout"]


def refused(key, value, *words):
    with pytest.raises(ConfigurationError) as info:
        parse_settings({f"mail.{key}": value})
    text = str(info.value)
    assert text.startswith(f"mail.{key} = "), text
    for word in words:
        assert word in text, text
    return text


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", float("nan"),
                                   float("inf"), "1e400"])
def test_rate_limit_must_be_a_finite_number(value):
    refused("rate_limit", value, "rate_limit")


@pytest.mark.parametrize("value", ["0", "0.0", 0])
def test_rate_limit_0_means_no_limit(value):
    assert parse_settings({"mail.rate_limit": value}).rate_limit is None


def test_rate_limit_negative_or_too_small_is_refused():
    refused("rate_limit", "-1", ">= 0")
    refused("rate_limit", "1e-300", "at least")  # a 1e300 s wait between two messages
    assert parse_settings({"mail.rate_limit": "0.5"}).rate_limit == 0.5


@pytest.mark.parametrize("name", sorted(set(DURATIONS)))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0, "9" * 400,
                                   "100000000000", "400d"])
def test_no_duration_is_nan_infinite_negative_or_beyond_a_year(name, value):
    refused(name, value)


@pytest.mark.parametrize("name", sorted(set(DURATIONS)))
def test_a_duration_within_a_year_is_used_as_given(name):
    settings = parse_settings({f"mail.{name}": "365d", "mail.data_timeout": "365d",
                               "mail.retry_max": "365d"})
    assert getattr(settings, name) == 365 * 86400
    assert math.isfinite(getattr(settings, name))


def test_data_timeout_shorter_than_timeout_is_refused_not_raised():
    text = refused("data_timeout", "1", "mail.timeout", "30")
    assert "twice" in text  # why: giving up on the final dot early risks a duplicate
    with pytest.raises(ConfigurationError):
        parse_settings({"mail.timeout": "2m", "mail.data_timeout": "60"})
    settings = parse_settings({"mail.timeout": "2", "mail.data_timeout": "2"})
    assert (settings.timeout, settings.data_timeout) == (2.0, 2.0)


def test_the_smtp_transport_honours_or_refuses_data_timeout_too():
    assert SMTPTransport(timeout=5, data_timeout=7).data_timeout == 7.0
    with pytest.raises(ValueError, match="data_timeout"):
        SMTPTransport(timeout=30, data_timeout=1)


@pytest.mark.parametrize("key, value", [("workers", "nan"), ("workers", "1e3"),
                                        ("connection_max_messages", "inf"),
                                        ("port", "nan"), ("debug", "inf")])
def test_whole_number_settings_refuse_nan_and_inf(key, value):
    refused(key, value, "whole number")
