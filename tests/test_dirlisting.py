"""A directory listed again only when its mtime moved (pyramid_txmail.util.dirlisting).

A daemon passes once per new message; with 5,000 deferred messages, listing
``deferred/`` and ``meta/`` every pass was most of what a pass cost once no
state file was read any more (issue 11, finding 8).  Real directories; the
directory's mtime is set back with ``os.utime`` to stand for "unchanged for
a while".
"""
from __future__ import annotations

import os
import time

from pyramid_txmail.util import dirlisting
from pyramid_txmail.util.dirlisting import Listing
from pyramid_txmail.queue.maildir.spool import Spool

from .test_deferred_index import park_deferred
from .test_processor import Clock, queue
from .test_deferred_index import processor


def settle(*paths):
    """Make directories look unchanged for 10 s (as a quiet deferred/ does)."""
    past = time.time() - 10
    for path in paths:
        os.utime(path, (past, past))


def test_a_settled_listing_is_kept_until_the_directory_changes(tmp_path):
    listing = Listing(str(tmp_path), sorted)
    (tmp_path / "a").touch()
    assert listing.get() == ["a"]
    assert listing.get() == ["a"] and listing.reads == 2  # just changed: not trusted yet
    settle(tmp_path)
    assert listing.get() == ["a"] and listing.reads == 3
    assert listing.get() == ["a"] and listing.reads == 3  # trusted: no listing
    (tmp_path / "b").touch()
    assert listing.get() == ["a", "b"] and listing.reads == 4
    os.rename(tmp_path / "a", tmp_path / "c")
    assert listing.get() == ["b", "c"]


def test_a_change_that_kept_the_mtime_is_seen_within_max_age(tmp_path, monkeypatch):
    """mtimes are coarse (and cached on NFS): a change can leave the mtime as it
    was; a listing is read again after MAX_AGE whatever the mtime says."""
    listing = Listing(str(tmp_path), sorted)
    settle(tmp_path)
    before = os.stat(tmp_path).st_mtime_ns
    assert listing.get() == []
    (tmp_path / "a").touch()
    os.utime(tmp_path, ns=(before, before))  # the change, inside the same tick
    assert listing.get() == []
    monkeypatch.setattr(dirlisting, "MAX_AGE", 0.0)
    assert listing.get() == ["a"]


def test_a_missing_directory_reads_as_empty(tmp_path):
    assert Listing(str(tmp_path / "gone")).get() == []


def test_a_pass_over_a_quiet_deferred_backlog_lists_neither_deferred_nor_meta(
        tmp_path, smtp_server, monkeypatch):
    spool, clock = Spool(str(tmp_path / "spool")), Clock()
    park_deferred(spool, 500, clock.now + 3600)
    qp = processor(smtp_server, spool, clock)
    qp.run_once()  # indexes the files (a change to deferred/)
    settle(*(os.path.join(spool.path, d) for d in ("deferred", "meta")))
    qp.run_once()
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(
        os.path.basename(os.fspath(p))) or real_listdir(p))
    queue(spool, ["new@example.org"])
    stats = qp.run_once()
    assert (stats.sent, stats.skipped) == (1, 500)
    assert "deferred" not in listed and "meta" not in listed
    assert 3600 <= qp.spool.earliest_retry(clock.now) - clock.now < 3600.01
    assert "deferred" not in listed
