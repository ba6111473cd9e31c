"""The package layout: imports run down the data path, and the public paths still work.

The rule is import-linter's ``layers`` contract in setup.cfg (scripts > dev >
mailer | processor > settings > queue > relay > compose > events > interfaces >
util); ``make test`` runs ``lint-imports`` through this file.  A second test breaks
the rule on purpose, with an import inside a function, in a copy of the package,
to show that the check sees lazy imports too and would fail.
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd, config=None):
    command = [str(LINT_IMPORTS), "--no-cache"] + (["--config", str(config)] if config else [])
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_imports_run_down_the_data_path():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Imports run down the data path KEPT" in done.stdout


def _copy_with_contract(tmp_path, name):
    """The package copied as ``name`` (its imports are relative, so it imports as
    itself) and setup.cfg's contract pointed at it."""
    shutil.copytree(ROOT / "pyramid_txmail", tmp_path / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    config = configparser.ConfigParser()
    for section in parser.sections():
        if section.startswith("importlinter"):
            config[section] = {key: value.replace("pyramid_txmail", name)
                               for key, value in parser[section].items()}
    with open(tmp_path / "contract.ini", "w") as f:
        config.write(f)
    return tmp_path / name, tmp_path / "contract.ini"


def test_an_upward_import_inside_a_function_breaks_the_rule(tmp_path):
    package, contract = _copy_with_contract(tmp_path, "txmail_copy")
    with open(package / "queue" / "maildir" / "claims.py", "a") as f:
        f.write("\n\ndef _upward():\n    from ...settings import parse_settings\n"
                "    return parse_settings\n")
    done = _lint(tmp_path, contract)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout
    assert "txmail_copy.queue.maildir.claims -> txmail_copy.settings" in done.stdout


def test_a_module_outside_the_layers_breaks_the_rule(tmp_path):
    """exhaustive: a new top-level module has to be given its place in the contract."""
    package, contract = _copy_with_contract(tmp_path, "txmail_copy")
    (package / "stray.py").write_text('"""Placed nowhere."""\n')
    done = _lint(tmp_path, contract)
    assert done.returncode != 0, done.stdout
    assert "txmail_copy.stray" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("pyramid_txmail", cache_dir=None)


def test_message_and_builder_are_no_circle(graph):
    """The builder imports message.py; message.py finds a Mail's parts by name."""
    assert graph.direct_import_exists(importer="pyramid_txmail.compose.builder",
                                      imported="pyramid_txmail.compose.message")
    assert graph.find_shortest_chain(importer="pyramid_txmail.compose.message",
                                     imported="pyramid_txmail.compose.builder") is None


def test_no_compose_module_imports_itself_back(graph):
    compose = sorted(m for m in graph.modules if m.startswith("pyramid_txmail.compose."))
    for module in compose:
        for imported in graph.find_modules_directly_imported_by(module):
            assert graph.find_shortest_chain(importer=imported, imported=module) is None, \
                f"{module} -> {imported} -> ... -> {module}"


def test_no_module_imports_the_package_root(graph):
    """The root (includeme, get_mailer) sits on top of everything; nothing imports it back."""
    assert graph.find_modules_directly_imported_by("pyramid_txmail")  # it imports them
    assert graph.find_modules_that_directly_import("pyramid_txmail") == set()


def test_the_public_paths_still_import():
    from pyramid_txmail import Mail, get_mailer, render_mail  # noqa: F401
    from pyramid_txmail.builder import Mail as BuilderMail
    from pyramid_txmail.compose.builder import Mail as ComposeMail
    from pyramid_txmail.debug import DebugMailer, includeme as debug_include  # noqa: F401
    from pyramid_txmail.events import MailDeferred, MailFailed, MailQueued, MailSent  # noqa
    from pyramid_txmail.interfaces import IMailer, IMailOutbox  # noqa: F401
    from pyramid_txmail.preview import development_reason, includeme as preview_include
    from pyramid_txmail.settings import parse_settings  # noqa: F401
    from pyramid_txmail.testing import (MEMORY_SETTINGS, Attachment, DummyMailer,  # noqa
                                        Outbox, SentMail, capture, dummy_request,
                                        includeme as testing_include, setUp)
    from pyramid_txmail.toolbar import MailPanel, includeme as toolbar_include  # noqa: F401

    assert Mail is BuilderMail is ComposeMail
    from pyramid_txmail.dev import debug, preview, testing, toolbar

    assert debug_include is debug.includeme and preview_include is preview.includeme
    assert testing_include is testing.includeme and toolbar_include is toolbar.includeme
    assert development_reason is preview.development_reason


@pytest.mark.parametrize("name", ["pyramid_txmail.testing", "pyramid_txmail.debug",
                                  "pyramid_txmail.preview"])
def test_the_public_includes_still_configure(name, tmp_path, monkeypatch):
    from pyramid import testing as pyramid_testing

    from pyramid_txmail.interfaces import IMailDelivery

    monkeypatch.chdir(tmp_path)  # pyramid_txmail.debug writes ./mail
    config = pyramid_testing.setUp(settings={"pyramid.reload_templates": "true",
                                             "mail.delivery": "memory"})
    try:
        config.include(name)
        config.commit()
        if name != "pyramid_txmail.preview":
            assert config.registry.queryUtility(IMailDelivery) is not None
    finally:
        pyramid_testing.tearDown()
