"""DKIM settings are checked at start-up: a key that cannot be used stops the start.

Every key file is opened, checked (a regular file, mode 0600 or 0400, owned by
the process's user) and parsed when the settings are read -- by
``config.include('pyramid_txmail')`` and by ``txmail-qp`` -- so that a bad one
is a ConfigurationError naming the key and the file, not a failure (or worse,
unsigned mail) at the first send.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail.settings import parse_settings

from .dkim_support import private_pem, write_key

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")


def _small_key(tmp_path):
    """A 512-bit RSA key (cryptography refuses to make one; openssl still does)."""
    path = str(tmp_path / "small.pem")
    subprocess.run(["openssl", "genrsa", "-out", path, "512"], check=True,
                   capture_output=True)
    os.chmod(path, 0o600)
    return path


def _make(tmp_path, kind):
    """A key file of the given kind; ``(path, words the error must contain)``."""
    if kind == "mode 0644":
        return write_key(tmp_path, mode=0o644)[0], ["mode 0644", "chmod 600"]
    if kind == "mode 0640":
        return write_key(tmp_path, mode=0o640)[0], ["mode 0640"]
    if kind == "another owner":
        path = write_key(tmp_path)[0]
        os.chown(path, os.geteuid() + 1 if os.geteuid() else 65534, -1)
        return path, ["owned by uid"]
    if kind == "missing":
        return str(tmp_path / "nowhere.pem"), ["cannot read the key file",
                                                "No such file"]
    if kind == "a directory":
        path = tmp_path / "keydir"
        path.mkdir(mode=0o700)
        return str(path), ["not a regular file"]
    if kind == "not a key":
        path = tmp_path / "notes.pem"
        path.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n"
                         b"-----END RSA PRIVATE KEY-----\n")
        os.chmod(path, 0o600)
        return str(path), ["not a PEM RSA private key"]
    if kind == "a public key":
        from cryptography.hazmat.primitives import serialization

        der = private_pem()[1]
        path = tmp_path / "public.pem"
        path.write_bytes(serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        os.chmod(path, 0o600)
        return str(path), ["not a PEM RSA private key"]
    if kind == "512 bits":
        return _small_key(tmp_path), ["512 bits", "RFC 8301"]
    raise AssertionError(kind)


KINDS = ["mode 0644", "mode 0640", "another owner", "missing", "a directory", "not a key",
         "a public key", "512 bits"]


def _settings(path):
    return {"mail.dkim_private_key": path, "mail.dkim_selector": "s1",
            "mail.dkim_domain": "example.com", "mail.delivery": "null"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_key_file_stops_config_include_naming_key_and_file(tmp_path, kind):
    path, words = _make(tmp_path, kind)
    config = Configurator(settings=_settings(path))
    with pytest.raises(ConfigurationError) as error:
        config.include("pyramid_txmail")
    text = str(error.value)
    assert text.startswith("mail.dkim_private_key = ") and path in text, text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("kind", ["mode 0644", "not a key"])
def test_a_bad_key_file_stops_txmail_qp_in_one_line(tmp_path, kind):
    path, words = _make(tmp_path, kind)
    ini = tmp_path / "qp.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {tmp_path}/q\n"
                   + "".join(f"{k} = {v}\n" for k, v in _settings(path).items()
                             if k != "mail.delivery"))
    done = subprocess.run([QP, str(ini), "--no-app"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "mail.dkim_private_key" in line and path in line, line
    for word in words:
        assert word in line, line


def test_a_bad_key_in_dkim_domains_is_named_with_its_line(tmp_path):
    good = write_key(tmp_path, "good.pem")[0]
    bad = write_key(tmp_path, "bad.pem", mode=0o604)[0]
    with pytest.raises(ConfigurationError) as error:
        parse_settings({"mail.dkim_domains": f"a.example s1 {good}\nb.example s2 {bad}"})
    text = str(error.value)
    assert text.startswith("mail.dkim_domains = 'b.example s2 ") and "mode 0604" in text
    assert f"(key file {bad})" in text  # named whole, however long the line


@pytest.mark.parametrize("settings, words", [
    ({"mail.dkim_selector": "s1"}, ["mail.dkim_selector", "mail.dkim_private_key",
                                    "mail.dkim_domain"]),
    ({"mail.dkim_private_key": "KEY", "mail.dkim_domain": "example.com"},
     ["mail.dkim_private_key", "also needs mail.dkim_selector"]),
    ({"mail.dkim_private_key": "keys/dkim.pem", "mail.dkim_selector": "s1",
      "mail.dkim_domain": "example.com"}, ["mail.dkim_private_key", "absolute path"]),
    ({"mail.dkim_private_key": "KEY", "mail.dkim_selector": "s 1",
      "mail.dkim_domain": "example.com"}, ["mail.dkim_selector = 's 1'", "not a selector"]),
    ({"mail.dkim_private_key": "KEY", "mail.dkim_selector": "s1",
      "mail.dkim_domain": "exa_mple..com"}, ["mail.dkim_domain", "is not a domain name"]),
    ({"mail.dkim_domains": "example.com s1"}, ["mail.dkim_domains",
                                               "expected 'domain selector /path/to/key.pem'"]),
    ({"mail.dkim_headers": "From, Received"}, ["mail.dkim_headers", "Received must not be"]),
    ({"mail.dkim_headers": "From, Subject"}, ["mail.dkim_headers", "no DKIM key"]),
    ({"mail.dkim_canonicalization": "loose"}, ["mail.dkim_canonicalization",
                                               "relaxed/relaxed"]),
    ({"mail.dkim_domains": "example.com s1 KEY\nEXAMPLE.com s2 KEY"},
     ["a second key for example.com"]),
])
def test_incomplete_or_wrong_dkim_settings_are_named(tmp_path, settings, words):
    path = write_key(tmp_path)[0]
    settings = {k: v.replace("KEY", path) for k, v in settings.items()}
    with pytest.raises(ConfigurationError) as error:
        parse_settings(settings)
    for word in words:
        assert word in str(error.value), str(error.value)


def test_good_settings_read_the_keys_and_mode_0400_is_fine(tmp_path):
    (tmp_path / "b").mkdir()
    one = write_key(tmp_path, mode=0o400)[0]
    two = write_key(tmp_path / "b", seed=1)[0]
    settings = parse_settings({**_settings(one), "mail.dkim_domains": f"news.example nl {two}",
                               "mail.dkim_headers": "subject to"})
    signer = settings.dkim
    assert sorted(signer.keys) == ["example.com", "news.example"]
    assert signer.headers == ("From", "subject", "to")
    assert signer.key_for("eu.news.example").selector == "nl"
    assert signer.key_for("example.org") is None
    assert "PRIVATE" not in repr(settings) and "modulus" not in repr(signer.keys)
    assert parse_settings({}).dkim is None
