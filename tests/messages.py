"""What the tests read of the package's messages."""

from __future__ import annotations


def said(error: object) -> str:
    """An error's message as a person reads it, less the line breaks it is wrapped at
    (between words, so that no frontend breaks one: ``tools.wrapped``); checked to be one
    paragraph, with no traceback."""
    text = str(error)
    assert "\n\n" not in text and "Traceback" not in text, text
    return text.replace("\n", " ")
