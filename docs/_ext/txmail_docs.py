"""Sphinx directives that generate pyramid_txmail's reference tables and pictures.

Nothing here is written by hand: each directive reads the code (or runs it) when
the documentation is built, so a page cannot drift from what the package does.

``txmail-settings``
    the settings reference: every key of :data:`pyramid_txmail.settings.SETTINGS`
    with its default and meaning.
``txmail-interfaces``
    the zope.interface interfaces of a module, read from the interfaces.
``txmail-states``
    the states of a queued message and the moves between them, drawn from the
    transition tables :data:`pyramid_txmail.queue.states.SPOOL_LIFECYCLE` and
    :data:`pyramid_txmail.queue.states.OUTBOX_LIFECYCLE` (which
    tests/test_queue_lifecycle.py checks against real runs).
``txmail-timeline``
    the two-phase commit of a message, recorded from a real Pyramid request
    (pyramid_tm) over a real spool in a temporary directory (and over the SQL
    outbox in a temporary SQLite database) while the documentation is built
    (:mod:`commit_recording`).
"""
from __future__ import annotations

import os

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.ext.graphviz import graphviz
from sphinx.util.docutils import SphinxDirective

import commit_recording
import lifecycle_graph


class SettingsDirective(SphinxDirective):
    """``.. txmail-settings::``: the table of every ``mail.*`` key."""

    def run(self):
        from pyramid_txmail.settings import SETTINGS, shown_default

        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 28 18 54",
                 "   :class: txmail-settings", "",
                 "   * - key", "     - default", "     - meaning"]
        for setting in SETTINGS:
            shown = shown_default(setting)
            default = shown if setting.default_text or shown == "--" else f"``{shown}``"
            lines += [f"   * - ``mail.{setting.name}``", f"     - {default}",
                      f"     - {setting.reference}"]
        return self.parse_lines(lines)

    def parse_lines(self, lines):
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="pyramid_txmail/settings_table.py"),
                                self.content_offset, container)
        return container.children


class InterfacesDirective(SettingsDirective):
    """``.. txmail-interfaces:: MODULE``: the zope.interface interfaces a module offers.

    autodoc documents classes and functions, not ``Interface`` objects; this lists
    each interface of MODULE's namespace (re-exported ones too) with its bases,
    attributes and methods, read from the interfaces themselves.
    """

    required_arguments = 1

    def run(self):
        import importlib
        import inspect

        from zope.interface.interface import InterfaceClass, Method

        module = importlib.import_module(self.arguments[0])
        lines = [f".. py:currentmodule:: {module.__name__}", ""]
        for name, iface in sorted(vars(module).items()):
            if not isinstance(iface, InterfaceClass) or name == "Interface":
                continue
            bases = ", ".join(f"{b.__module__}.{b.__name__}" for b in iface.__bases__
                              if b.__name__ != "Interface")
            lines += [f".. py:class:: {name}", ""]
            if bases:
                lines += [f"   Extends {bases}.", ""]
            lines += ["   " + line for line in inspect.cleandoc(iface.__doc__ or "").splitlines()]
            lines.append("")
            for member in iface.names(all=False):
                item = iface[member]
                if isinstance(item, Method):
                    lines.append(f"   .. py:method:: {member}{item.getSignatureString()}")
                else:
                    lines.append(f"   .. py:attribute:: {member}")
                lines.append("")
                doc = inspect.cleandoc(item.getDoc() or "")
                lines += ["      " + line for line in doc.splitlines()] + [""]
        return self.parse_lines(lines)


def graph_node(directive, dot, caption, kind="txmail-diagram"):
    """A ``sphinx.ext.graphviz`` node of ``dot`` (rendered as SVG by its ``dot``), in a
    figure of class ``kind``: _ext/static/txmail.css shows it at its natural size,
    scrolling sideways where the page is narrower, never shrunk to unreadable text."""
    node = graphviz()
    node["code"] = dot
    node["options"] = {"docname": directive.env.docname}
    node["alt"] = caption
    figure = nodes.figure("", node, classes=["txmail-diagram", kind])
    figure += nodes.caption("", caption)
    return figure


class StatesDirective(SphinxDirective):
    """``.. txmail-states::``: the lifecycle of a queued message, per backend."""

    def run(self):
        from pyramid_txmail.queue.states import OUTBOX_LIFECYCLE, SPOOL_LIFECYCLE

        return [
            graph_node(self, lifecycle_graph.dot(SPOOL_LIFECYCLE, "spool"),
                       "The Maildir spool: a message's directory as it moves; each arrow "
                       "lists every cause of that move "
                       "(pyramid_txmail.queue.states.SPOOL_LIFECYCLE, checked against "
                       "real runs by tests/test_queue_lifecycle.py)"),
            graph_node(self, lifecycle_graph.dot(OUTBOX_LIFECYCLE, "outbox"),
                       "The SQL outbox: a row's state column, each arrow with every cause "
                       "of that move (pyramid_txmail.queue.states.OUTBOX_LIFECYCLE, "
                       "checked likewise)"),
        ]


class TimelineDirective(SphinxDirective):
    """``.. txmail-timeline::``: the commit's steps, recorded from real transactions."""

    def run(self):
        spool_steps = commit_recording.record_spool_commit()
        outbox_steps = commit_recording.record_outbox_commit()
        return [
            graph_node(self, commit_recording.timeline_dot(spool_steps, "spool"),
                       "A request whose view inserts a row and calls request.mailer.send(), "
                       "with the Maildir spool, recorded from a real Pyramid request "
                       "(pyramid_tm, the router's callbacks) when these docs were built: "
                       "each row is a call as it returned (so the spool's steps come before "
                       "the vote and finish they belong to), and what another process saw "
                       "then. pyramid_tm commits after the view has returned; in a request, "
                       "MailQueued is notified from a finished callback -- after the "
                       "response callbacks, before the response goes back to the server",
                       "txmail-timeline"),
            graph_node(self, commit_recording.timeline_dot(outbox_steps, "outbox"),
                       "The same request with the SQL outbox: one commit of the "
                       "application's database (recorded likewise, on SQLite)",
                       "txmail-timeline"),
        ]


def setup(app):
    app.config.html_static_path.append(os.path.join(os.path.dirname(__file__), "static"))
    app.add_css_file("txmail.css")
    app.add_directive("txmail-settings", SettingsDirective)
    app.add_directive("txmail-interfaces", InterfacesDirective)
    app.add_directive("txmail-states", StatesDirective)
    app.add_directive("txmail-timeline", TimelineDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
