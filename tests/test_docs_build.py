"""The documentation builds with warnings as errors, and says what the code says (issue 16).

``make test`` runs this, so a broken reference, a missing picture or a page out
of step with the code fails the suite.  The settings reference is generated from
the settings table (docs/_ext/txmail_docs.py); here it is checked against that
table, and the API page against the public names.
"""
from __future__ import annotations

import importlib
import re

import pytest

import pyramid_txmail
from pyramid_txmail.settings import SETTINGS, shown_default

from pyramid_txmail.queue.states import OUTBOX_LIFECYCLE, SPOOL_LIFECYCLE

from .docs_support import build_docs, docs_extension, edge_labels, table_rows

lifecycle_graph = docs_extension("lifecycle_graph")

#: The public modules and the API page's section for each (their ``__all__``).
PUBLIC_MODULES = ("testing", "preview", "toolbar", "debug", "builder")


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    built = build_docs(out)
    assert built.returncode == 0, built.stdout[-6000:]
    return out / "html"


def ids(page):
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


def test_every_chapter_of_the_issue_is_a_page(html):
    for chapter in ("getting-started", "sending", "transactions", "queues", "direct",
                    "testing", "devtools", "migration", "operating", "postfix", "security",
                    "reliability", "benchmarks", "settings", "changelog", "api"):
        assert (html / f"{chapter}.html").is_file(), chapter
        assert f'href="{chapter}.html"' in (html / "index.html").read_text(), chapter


def test_the_settings_page_lists_every_key_with_its_default(html):
    rows = table_rows(html / "settings.html", "txmail-settings")
    assert rows[0] == ["key", "default", "meaning"]
    listed = {row[0]: row for row in rows[1:]}
    assert list(listed) == [f"mail.{s.name}" for s in SETTINGS]
    for setting in SETTINGS:
        key, default, meaning = listed[f"mail.{setting.name}"]
        shown = shown_default(setting)
        assert default == ("\N{EN DASH}" if shown == "--" else shown), key  # smartquotes' --
        assert meaning, key


def test_the_api_page_has_the_public_names(html):
    documented = ids(html / "api.html")
    missing = [name for name in pyramid_txmail.__all__
               if not any(i.endswith("." + name) for i in documented)]
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"pyramid_txmail.{module_name}")
        missing += [f"{module.__name__}.{name}" for name in module.__all__
                    if f"{module.__name__}.{name}" not in documented
                    and not name.isupper()]  # constants: no docstring to show
    assert missing == []


def test_the_pictures_are_generated_into_the_pages(html):
    """Two state diagrams and two timelines (graphviz SVG) on the transactions page; the
    three plots of bench/RESULTS.md on the benchmarks page."""
    transactions = (html / "transactions.html").read_text()
    diagrams = re.findall(r'<object data="(_images/graphviz-[0-9a-f]+\.svg)"', transactions)
    svgs = [(html / path).read_text() for path in diagrams]
    assert all("<svg" in svg and "class=\"node\"" in svg for svg in svgs)

    def the(what, *texts):
        found = [svg for svg in svgs if all(text in svg for text in texts)]
        assert len(found) == 1, f"one {what} on the transactions page, found {len(found)}"
        return found[0]

    spool_states = the("spool state diagram", ">prepared/</text>", ">failed/</text>")
    outbox_states = the("outbox state diagram", ">in_progress</text>", ">delivered</text>")
    for svg, lifecycle in ((spool_states, SPOOL_LIFECYCLE), (outbox_states, OUTBOX_LIFECYCLE)):
        drawn = {edge: " ".join(label.split())  # graphviz indents with no-break spaces
                 for edge, label in edge_labels(svg).items()}
        assert drawn == {edge: " ".join(" ".join(lifecycle_graph.edge_label(causes)).split())
                         for edge, causes in lifecycle_graph.edges(lifecycle).items()}
        for row in lifecycle:  # every edge carries every cause of its move
            assert row.cause in drawn[row[:2]].replace("\u2022 ", ""), row
    spool_timeline = the("spool timeline", "tpc_vote", "commit_prepared")
    outbox_timeline = the("outbox timeline", "tpc_vote", "outbox row: queued")
    assert spool_timeline.index("tpc_vote") < spool_timeline.index("commit_prepared")
    assert "outbox row: queued" in outbox_timeline
    benchmarks = (html / "benchmarks.html").read_text()
    for plot in ("targets.svg", "drain.svg", "enqueue.svg"):
        assert f'src="_images/{plot}"' in benchmarks
        assert "<svg" in (html / "_images" / plot).read_text()


def test_the_recorded_timeline_is_the_commit_the_docs_describe():
    """What the timeline picture shows, asserted: in a request, pyramid_tm commits after
    the view returned; our vote writes the message into tmp/ and prepared/ before the
    database commits (prepared/ fsynced: durable before the database's commit), the
    finish publishes it into new/ after; MailQueued comes after the
    response callbacks and before the response goes back to the server (a finished
    callback); with the SQL outbox the row commits with the application's."""
    commit_recording = docs_extension("commit_recording")
    seen = [(s.actor, s.call.split(":")[0], ", ".join(s.spool), s.row)
            for s in commit_recording.record_spool_commit()]
    database = "database (zope.sqlalchemy)"
    order = [step[:2] for step in seen]
    assert order.index(("the spool", "write_tmp")) < order.index(("the spool", "prepare")) \
        < order.index(("the spool", "settle_prepared")) \
        < order.index(("pyramid_txmail", "tpc_vote")) < order.index((database, "tpc_vote")) \
        < order.index(("the spool", "commit_prepared")) \
        < order.index(("pyramid_txmail", "tpc_finish")) \
        < order.index(("the request (Pyramid)", "response callback")) \
        < order.index(("subscriber", "MailQueued event")) \
        == len(order) - 2
    assert order[:3] == [("view", "INSERT the application's row"),
                         ("view", "request.mailer.send(message)"), ("view", "the view returns")]
    assert order[-1] == ("the request (Pyramid)", "the response goes back to the server")
    by_call = {step[:2]: step[2:] for step in seen}
    assert by_call[("the spool", "write_tmp")] == ("tmp/", False)
    assert by_call[("pyramid_txmail", "tpc_vote")] == ("prepared/", False)
    assert by_call[(database, "tpc_vote")] == ("prepared/", True)  # the database's commit
    assert by_call[("the spool", "commit_prepared")] == ("new/", True)

    outbox_steps = commit_recording.record_outbox_commit()
    outbox = {(s.actor, s.call): (", ".join(s.spool), s.row) for s in outbox_steps}
    assert outbox[("view", "request.mailer.send(message)")] == ("", False)
    assert [(s.actor, s.call) for s in outbox_steps][-2:] == [
        ("subscriber", "MailQueued event"),
        ("the request (Pyramid)", "the response goes back to the server")]
    assert outbox[(database, "tpc_vote")] == ("outbox row: queued", True)
