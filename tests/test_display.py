"""How an answer is cut into Markdown blocks while it streams, and what it is saved as."""

from __future__ import annotations

import itertools

import mistune
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowgpt_magic.display import MarkdownBlocks, code_of, static_bundle

ANSWER = """\
# Reading a file

Use `open` in a `with` block:

```python
with open("data.txt") as f:

    text = f.read()
```

Then:

1. check the encoding;
2. handle `FileNotFoundError`.

- a list item

  with a second paragraph, indented

    and code inside it
~~~
fence of tildes

```
~~~
Done."""


def stream(text: str, sizes: list[int], tail_limit: int = 10**9) -> tuple[list[str], str]:
    """Feed ``text`` in pieces of the given sizes (cycled); the blocks and the tail."""
    blocks, splitter, at = [], MarkdownBlocks(tail_limit), 0
    for size in itertools.cycle(sizes):
        if at >= len(text):
            break
        blocks += splitter.feed(text[at : at + size])
        at += size
    return blocks, splitter.tail


def test_blocks_end_at_blank_lines_outside_code_and_before_unindented_lines() -> None:
    blocks, tail = stream(ANSWER, [7])
    assert blocks == [
        "# Reading a file\n\n",
        "Use `open` in a `with` block:\n\n",
        '```python\nwith open("data.txt") as f:\n\n    text = f.read()\n```\n\n',
        "Then:\n\n",
        "1. check the encoding;\n2. handle `FileNotFoundError`.\n\n",
    ]
    # No blank line before the ~~~ fence or after it: all one block, still growing.
    assert tail.startswith("- a list item\n\n  with a second paragraph")


def test_each_block_renders_as_it_does_within_the_whole_answer() -> None:
    blocks, tail = stream(ANSWER, [1, 5, 40])
    whole = mistune.html(ANSWER)
    assert "".join(mistune.html(block) for block in [*blocks, tail]) == whole


@pytest.mark.parametrize("text", [ANSWER, "word " * 3000, "```\n" + "x = 1\n" * 2000])
def test_a_long_tail_is_cut_and_a_code_block_cut_in_two_is_closed_and_reopened(
    text: str,
) -> None:
    blocks, tail = stream(text, [13], tail_limit=100)
    # At most the limit, the last piece (13) and a fence closed and reopened (8).
    assert all(len(block) <= 100 + 13 + 8 for block in blocks)
    # Every block renders alone: a code block cut in two is closed, and reopened after.
    for block in blocks:
        assert MarkdownBlocks().feed(block + "\n\nnext\n") == [block + "\n\n"]
    if text.startswith("```"):
        assert all(block.startswith("```\n") and block.endswith("```\n") for block in blocks)
        assert "".join(b.removeprefix("```\n").removesuffix("```\n") for b in blocks) + (
            tail
        ) == text.removeprefix("```\n")
    else:
        assert "".join(blocks) + tail == text


@given(
    st.text(st.sampled_from("ab `~\n  #-1."), max_size=200), st.lists(st.integers(1, 9), min_size=1)
)
def test_any_split_gives_the_same_blocks_and_loses_nothing(text: str, sizes: list[int]) -> None:
    blocks, tail = stream(text, sizes)
    assert "".join(blocks) + tail == text
    assert (blocks, tail) == stream(text, [len(text) or 1])


def test_code_is_taken_from_the_fenced_blocks_or_else_is_the_whole_answer() -> None:
    assert code_of(ANSWER) == (
        'with open("data.txt") as f:\n\n    text = f.read()\n\nfence of tildes\n\n```',
        "python",
    )
    assert code_of("print(1)\n") == ("print(1)", "python")
    assert code_of("Here:\n```js\nlet a\n") == ("let a", "js")  # cut off: what came


def test_what_an_answer_is_saved_as() -> None:
    assert static_bundle("*hi*", "markdown") == {"text/markdown": "*hi*", "text/plain": "*hi*"}
    assert static_bundle("*hi*", "text") == {"text/plain": "*hi*"}
    assert static_bundle("", "markdown") == {"text/plain": ""}
    code = static_bundle("Try:\n```python\nx = '```'\n```\nok", "code")
    assert code == {"text/markdown": "````python\nx = '```'\n````", "text/plain": "x = '```'"}


def test_the_footer_goes_under_the_answer_in_every_format() -> None:
    cut_short = "Look:\n```python\nx = 1"  # an interrupted answer: its code block stays open
    bundle = static_bundle(cut_short, "markdown", "m · <1 s")
    assert bundle == {
        "text/markdown": f"{cut_short}\n```\n\n<small><i>m · &lt;1 s</i></small>",
        "text/plain": f"{cut_short}\n\n(m · <1 s)",
    }
    assert static_bundle("hi", "text", "m") == {"text/plain": "hi\n\n(m)"}
    assert static_bundle("x = 1", "code", "m")["text/plain"] == "x = 1\n\n(m)"
    assert static_bundle("", "markdown", "m") == {"text/plain": ""}
