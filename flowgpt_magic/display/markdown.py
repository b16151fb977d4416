"""An answer's Markdown: the blocks it is cut into while it streams, the code in it, and
what it is saved as once finished. Pure functions of text; nothing is shown here."""

from __future__ import annotations

from ..record import Format

#: The unfinished Markdown block is cut at a line (or word) once it is this long, so that a
#: long paragraph or code block is not sent and rendered again whole on every update.
TAIL_LIMIT = 4_000


class MarkdownBlocks:
    """Cuts a Markdown answer, as it grows, into finished blocks and an unfinished tail.

    A block ends at a blank line outside a fenced code block when the next line starts in
    the first column: an indented line after a blank one may go on with a list item (and
    alone would render as code). A finished block renders the same on its own as within the
    whole answer, so it is sent once and kept; only the tail changes. A tail longer than
    ``TAIL_LIMIT`` is cut at its last line break (or space) into a block of its own; within
    a code block, the cut closes the fence and the tail reopens it.
    """

    def __init__(self, tail_limit: int = TAIL_LIMIT) -> None:
        self.tail = ""
        self._tail_limit = tail_limit
        self._scanned = 0  # where in the tail the first line not yet looked at starts
        self._fence = ""  # the fence of the open code block ("```", "~~~~"), or ""
        self._opening = ""  # the line that opened it
        self._reopen = ""  # that line again, when a cut split the code block
        self._blank = False  # the last line looked at was blank, outside a code block

    @property
    def open_fence(self) -> str:
        """The fence of a code block open at the end of what was fed, or ""."""
        return self._fence

    @property
    def shown_tail(self) -> str:
        return self._reopen + self.tail if self.tail else ""

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the blocks it finished, in order."""
        tail = self.tail + text
        blocks: list[str] = []
        start, scanned = 0, self._scanned
        while (end := tail.find("\n", scanned)) != -1:
            line = tail[scanned:end]
            if self._fence:
                if fence_closes(line, self._fence):
                    self._fence = ""
            elif not line.strip():
                self._blank = True
            else:
                if self._blank and not line[0].isspace():
                    blocks.append(self._reopen + tail[start:scanned])
                    self._reopen = ""
                    start = scanned
                self._blank = False
                self._fence = fence_opened(line)
                self._opening = line + "\n"
            scanned = end + 1
        self.tail, self._scanned = tail[start:], scanned - start
        if len(self.tail) > self._tail_limit:
            blocks.append(self._cut())
        return blocks

    def _cut(self) -> str:
        """Cut the tail after its last whole line, or else at its last space."""
        tail = self.tail
        at = self._scanned or tail.rfind(" ") + 1 or len(tail)
        block, self.tail = self._reopen + tail[:at], tail[at:]
        self._scanned = max(0, self._scanned - at)
        self._reopen = ""
        if self._fence:
            # Close the code block here, so that it renders as one; the rest reopens it.
            self._reopen = self._opening
            block += ("" if block.endswith("\n") else "\n") + self._fence + "\n"
        return block


def fence_opened(line: str) -> str:
    """The fence a line opens a code block with (```` ``` ````, ``~~~``...), or ""."""
    stripped = line.lstrip(" ")
    if len(line) - len(stripped) > 3 or stripped[:3] not in ("```", "~~~"):
        return ""
    fence = stripped[: len(stripped) - len(stripped.lstrip(stripped[0]))]
    if fence[0] == "`" and "`" in stripped[len(fence) :]:
        return ""  # an inline code span, not a fence
    return fence


def fence_closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and len(stripped) >= len(fence)
        and stripped == fence[0] * len(stripped)
    )


def code_of(text: str, whole: bool = True) -> tuple[str, str]:
    """The code in an answer, and its language: the contents of its fenced code blocks
    (the last may be unfinished), or else (``whole``) the whole answer, taken as Python,
    or ("", "python")."""
    language, code, fence = "", [], ""
    for line in text.splitlines():
        if fence:
            if fence_closes(line, fence):
                fence = ""
                code.append("")
            else:
                code.append(line)
        elif fence := fence_opened(line):
            info = line.strip()[len(fence) :].split()
            language = language or (info[0] if info else "")
    if not code and not fence:
        return text.strip("\n") if whole else "", "python"
    return "\n".join(code).strip("\n"), language or "python"


def live_blocks(answer_format: Format) -> MarkdownBlocks | None:
    """The blocks a live view cuts an answer into, for what is rendered as it streams:
    Markdown, and JSON as a code block (its fence opened before the first piece)."""
    if answer_format not in ("markdown", "json"):
        return None
    blocks = MarkdownBlocks()
    if answer_format == "json":
        blocks.feed("```json\n")
    return blocks


def json_text(text: str) -> str | None:
    """``text``, indented as JSON, if it is a JSON object or array; else None."""
    import json

    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
    except ValueError:
        return None


def static_bundle(
    text: str,
    answer_format: Format,
    footer: str | None = None,
    *,
    reasoning: str = "",
    notice: str | None = None,
    calls: str = "",
) -> dict[str, str]:
    """What a finished answer is saved as: Markdown, text, or a code block (as Markdown, so
    that frontends highlight it), always with plain text beside it; the footer under it,
    and under that a ``notice`` (an answer cut short). The model's ``reasoning`` comes
    first, folded (an HTML ``<details>``), then the function ``calls`` it made (folded too);
    the plain text is the answer's alone."""
    import html

    if not text and not reasoning and not notice and not calls:
        return {"text/plain": ""}  # (not an empty bundle, which exports warn about)
    under, marks = [], []  # the lines under the answer: as plain text, and as HTML
    if footer:
        under.append(f"({footer})")
        marks.append(f"<small><i>{html.escape(footer)}</i></small>")
    if notice:
        under.append(f"■ {notice}")
        marks.append(html.escape(f"■ {notice}"))
    folded = _paragraphs(_folded(reasoning) if reasoning else "", calls)
    if answer_format in ("markdown", "json") and (indented := json_text(text)) is not None:
        # (JSON is data, not prose: as one highlighted block, however it was asked for.)
        ticks = "`" * max(3, _longest_run(indented, "`") + 1)
        return {
            "text/markdown": _paragraphs(folded, f"{ticks}json\n{indented}\n{ticks}", *marks),
            "text/plain": _paragraphs(indented, *under),
        }
    if answer_format == "text":
        plain = _paragraphs(text, *under)
        if not folded:
            return {"text/plain": plain}
        page = f"<pre>{html.escape(text)}</pre>" if text else ""
        html_marks = "".join(f"<p>{mark}</p>" for mark in marks)
        return {"text/html": folded + page + html_marks, "text/plain": plain}
    if answer_format == "markdown":
        markdown, plain = text + _closing_fence(text), text
    elif answer_format == "json":  # (what came is not JSON: shown as it is, as code)
        ticks = "`" * max(3, _longest_run(text, "`") + 1)
        markdown, plain = (f"{ticks}json\n{text}\n{ticks}" if text else ""), text
    else:
        plain, language = code_of(text)
        ticks = "`" * max(3, _longest_run(plain, "`") + 1)
        markdown = f"{ticks}{language}\n{plain}\n{ticks}" if text else ""
    return {
        "text/markdown": _paragraphs(folded, markdown, *marks),
        "text/plain": _paragraphs(plain, *under),
    }


def _paragraphs(*parts: str) -> str:
    return "\n\n".join(part for part in parts if part)


#: How reasoning is set apart from the answer, unfolded: grey, behind a rule, indented,
#: broken between words (an output's <pre> breaks anywhere). (Plain colours: the
#: frontends' sanitizers drop CSS variables.)
REASONING_STYLE = (
    "white-space: pre-wrap; word-break: normal; color: #757575; "
    "border-left: 3px solid #e0e0e0; padding-left: 1em; margin: 0.5em 0 1em 0"
)


def _folded(reasoning: str) -> str:
    """The model's reasoning, folded: HTML, so that Markdown leaves its text alone."""
    import html

    return (
        f"<details><summary>Reasoning ({len(reasoning):,} characters)</summary>\n"
        f'<pre style="{REASONING_STYLE}">{html.escape(reasoning.strip())}</pre>\n'
        "</details>"
    )


def bold(text: str) -> str:
    """``text`` in bold Markdown, its Markdown characters escaped (a model's name)."""
    import re

    return "**" + re.sub(r"([\\`*_\[\]<>~|])", r"\\\1", text) + "**"


#: The margins a frontend gives a code block at the top of rendered Markdown, and not to
#: one inside an HTML block (JupyterLab's ``.jp-RenderedHTMLCommon > pre``).
CODE_MARGIN = "margin: 1.5em 2em"


def nested_markdown(markdown: str) -> str:
    """``markdown`` to be rendered inside an HTML block (a column): each code block in a
    block of its own that gives it the margins it has at the top level, so that it looks
    as it does in a single answer."""
    lines, fence, out = markdown.split("\n"), "", []
    for line in lines:
        if fence:
            out.append(line)
            if fence_closes(line, fence):
                fence = ""
                out += ["", "</div>", ""]
        elif fence := fence_opened(line):
            out += ["", f'<div style="{CODE_MARGIN}">', "", line]
        else:
            out.append(line)
    if fence:
        out += [fence, "", "</div>"]
    return "\n".join(out)


def _closing_fence(text: str) -> str:
    """What closes a code block left open at the end of ``text`` (an answer cut short)."""
    blocks = MarkdownBlocks()
    blocks.feed(text + "\n")
    return f"\n{blocks.open_fence}" if blocks.open_fence else ""


def _longest_run(text: str, char: str) -> int:
    longest = run = 0
    for c in text:
        run = run + 1 if c == char else 0
        longest = max(longest, run)
    return longest
