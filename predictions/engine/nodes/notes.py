"""`stickyNote`: a canvas comment; kept in the flow, never run."""

from __future__ import annotations

from .base import InputSpec, NodeType


class StickyNoteNode(NodeType):
    """`stickyNote`: has no edges and no instance."""

    name = "stickyNote"
    label = "Sticky Note"
    inputs = (InputSpec("note"),)
    runnable = False
