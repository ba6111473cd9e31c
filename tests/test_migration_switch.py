"""The include/import switch the real-project tests apply (tests/migration_support.py)."""
from __future__ import annotations

import pytest

from .migration_support import SwitchError, switch_line, switch_tree


@pytest.mark.parametrize("before, after", [
    ("from pyramid_mailer import get_mailer", "from pyramid_txmail import get_mailer"),
    ("    from pyramid_mailer.mailer import DummyMailer",
     "    from pyramid_txmail.testing import DummyMailer"),
    ("from pyramid_mailer.interfaces import IMailer",
     "from pyramid_txmail.interfaces import IMailer"),
    ("from pyramid_mailer.mailer import Mailer", "from pyramid_txmail import Mailer"),
    ('config.include("pyramid_mailer")', 'config.include("pyramid_txmail")'),
    ("config.include('pyramid_mailer.testing')", "config.include('pyramid_txmail.testing')"),
    ('config.include("pyramid_mailer" + (".debug" if debug else ""))',
     'config.include("pyramid_txmail" + (".debug" if debug else ""))'),
])
def test_includes_and_imports_are_switched(before, after):
    assert switch_line(before) == after


@pytest.mark.parametrize("line", [
    "from pyramid_mailer.message import Message",     # accepted as it is
    "from  pyramid_mailer.message  import  Attachment",
    '    """Uses pyramid_mailer.message.Message."""',   # prose is not code
    "'pyramid_mailer',",                               # e.g. install_requires
])
def test_everything_else_is_left_as_it_was(line):
    assert switch_line(line) == line


@pytest.mark.parametrize("line", [
    "import pyramid_mailer",
    "from pyramid_mailer import (get_mailer,",
    "from pyramid_mailer import get_mailer, Message",
    "config.include('pyramid_mailer.unknown')",
])
def test_what_the_table_cannot_express_is_an_error_not_a_guess(line):
    with pytest.raises(SwitchError):
        switch_line(line)


def test_switch_tree_rewrites_only_changed_files_and_reports_each_line(tmp_path):
    (tmp_path / "pkg").mkdir()
    app = tmp_path / "pkg" / "app.py"
    app.write_text("from pyramid_mailer import get_mailer\r\nx = 1\r\n")
    other = tmp_path / "pkg" / "other.py"
    other.write_text("from pyramid_mailer.message import Message\n")
    mtime = other.stat().st_mtime_ns
    assert switch_tree(tmp_path) == (("pkg/app.py", "from pyramid_mailer import get_mailer",
                                      "from pyramid_txmail import get_mailer"),)
    assert app.read_bytes() == b"from pyramid_txmail import get_mailer\r\nx = 1\r\n"
    assert other.stat().st_mtime_ns == mtime
