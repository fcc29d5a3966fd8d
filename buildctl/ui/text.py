"""Text helpers for the views (pure)."""

from __future__ import annotations

ELLIPSIS = "..."


def elide_middle(text: str, width: int) -> str:
    """Cut `text` to `width` characters in the middle, as ninja does, so both the directory
    and the file name of a long job name stay readable."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return ELLIPSIS[:width]
    keep = width - len(ELLIPSIS)
    head = keep // 2
    tail = keep - head
    return text[:head] + ELLIPSIS + text[len(text) - tail :]
