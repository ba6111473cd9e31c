"""The DOT source of a queue's state diagram, from a lifecycle table in the code.

A table is ``(from, to, cause, code)`` rows, one per cause of a move
(:data:`pyramid_txmail.queue.states.SPOOL_LIFECYCLE`, ``OUTBOX_LIFECYCLE``); every
state and edge drawn comes from its rows, and nothing else does.  A move with
several causes is one edge whose label lists every one of them (each cause once).
"""
from __future__ import annotations

import textwrap

#: Fill colours by what a state means to a person reading the diagram.
COLOURS = {"failed": "#f4c7c3", "deferred": "#fce8b2", "done": "#d9ead3",
           "delivered": "#d9ead3", "new": "#cfe2f3", "queued": "#cfe2f3"}


def quoted(text):
    return '"' + text.replace('"', '\\"') + '"'


def dot(lifecycle, name):
    from pyramid_txmail.queue.states import CREATED, GONE, LABELS

    lines = [f"digraph {name} {{",
             '  graph [rankdir=TB, nodesep=0.35, ranksep=0.5, fontname="sans-serif"];',
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", '
             'fontname="sans-serif", fontsize=11];',
             '  edge [fontname="sans-serif", fontsize=9, color="#555555"];']
    states = []
    for source, target, *_ in lifecycle:
        for state in (source, target):
            if state not in states:
                states.append(state)
    for state in states:
        if state in (CREATED, GONE):
            lines.append(f"  {quoted(state)} [shape=ellipse, style=dashed, fontsize=10];")
            continue
        label = state + "/" if name == "spool" else state
        if name == "spool" and LABELS.get(state, state) != state:  # new/ is "queued"
            label += f"\\n({LABELS[state]})"
        colour = COLOURS.get(state, "#ffffff")
        lines.append(f"  {quoted(state)} [label={quoted(label)}, fillcolor={quoted(colour)}];")
    for (source, target), causes in edges(lifecycle).items():
        label = "\\n".join(edge_label(causes))  # DOT's line break: narrow, taller
        lines.append(f"  {quoted(source)} -> {quoted(target)} [label={quoted(label)}];")
    lines.append("}")
    return "\n".join(lines)


def edges(lifecycle):
    """``{(from, to): [cause, ...]}`` in the table's order, each cause once."""
    found = {}
    for source, target, cause, *_ in lifecycle:
        causes = found.setdefault((source, target), [])
        if cause not in causes:
            causes.append(cause)
    return found


def edge_label(causes):
    """The label's lines: each cause wrapped to 26 characters, a bullet before each
    when there are several."""
    if len(causes) == 1:
        return textwrap.wrap(causes[0], 26, break_on_hyphens=False)
    return [line for cause in causes  # txmail-queue, --stale: never split at a hyphen
            for line in textwrap.wrap(cause, 26, initial_indent="\u2022 ",
                                      subsequent_indent="  ", break_on_hyphens=False)]
