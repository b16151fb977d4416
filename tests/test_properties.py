"""Properties of the stream decoders, for any input hypothesis can think of."""

from __future__ import annotations

import itertools
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowgpt_magic import FlowGptError
from flowgpt_magic.providers.events import Reasoning
from flowgpt_magic.providers.flowgpt import NdjsonTextParser
from flowgpt_magic.providers.lines import LineBuffer
from flowgpt_magic.providers.sse import SseParser
from flowgpt_magic.providers.stream import StreamParser


def decode(chunks: list[bytes], parser: StreamParser) -> list[str]:
    """What the provider does with the reads of a body (see providers.stream.stream)."""
    buffer, pieces = LineBuffer(), []
    for chunk in chunks:
        block = buffer.feed(chunk)
        if block is not None:
            pieces += parser.parse(block)
            if parser.error is not None:
                raise parser.error
            if parser.done:
                return pieces
    rest = buffer.close()
    pieces += [*(parser.parse(rest) if rest else []), *parser.finish()]
    if parser.error is not None:
        raise parser.error
    return pieces


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


texts = st.lists(st.text(min_size=1), max_size=30)
cuts = st.lists(st.integers(min_value=0, max_value=10**6), max_size=40)


@given(texts, cuts, st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_split_of_an_ndjson_stream_gives_the_same_pieces(
    pieces: list[str], where: list[int], ascii_only: bool
) -> None:
    events = [{"event": "start"}] + [{"event": "text", "data": p} for p in pieces]
    stream = "".join(json.dumps(e, ensure_ascii=ascii_only) + "\n" for e in events).encode()
    assert decode(split(stream, where), NdjsonTextParser()) == pieces


@given(texts, cuts)
@settings(max_examples=300, deadline=None)
def test_any_split_of_a_server_sent_event_stream_gives_the_same_pieces(
    pieces: list[str], where: list[int]
) -> None:
    events = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    stream = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events)
    stream += "data: [DONE]\n\n"
    decoded = decode(split(stream.encode(), where), SseParser())
    whole = "".join(pieces)
    if not whole.lstrip().startswith("<think>"):
        # The same text; at its start, what could open a <think> block is held back until
        # it is clear that it does not.
        assert "".join(decoded) == whole
        if pieces and pieces[0].strip() and not "<think>".startswith(pieces[0].lstrip()[:7]):
            assert decoded == pieces


@given(st.lists(st.binary(max_size=200), max_size=20))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_raise_only_our_own_errors(chunks: list[bytes]) -> None:
    for parser in (NdjsonTextParser(), SseParser()):
        try:
            pieces = decode(chunks, parser)
        except FlowGptError:
            continue
        assert all(isinstance(piece, str) and piece for piece in pieces)


@given(
    st.lists(
        st.sampled_from(
            [
                b"{",
                b"}",
                b"[",
                b"]",
                b",",
                b"\n",
                b'"',
                b"1",
                b"{}",
                b'{"event": "text", "data": "x"}',
                b":",
                b" ",
            ]
        ),
        max_size=60,
    )
)
@settings(max_examples=500, deadline=None)
def test_json_like_bytes_decode_as_line_by_line_would(tokens: list[bytes]) -> None:
    stream = b"".join(tokens)
    by_line: list[str] | None
    try:
        by_line = []
        for line in stream.split(b"\n"):
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "text":
                    by_line.append(event["data"])
    except ValueError:
        by_line = None
    try:
        batched: list[str] | None = decode([stream], NdjsonTextParser())
    except FlowGptError:
        batched = None
    if by_line is not None:
        assert batched == by_line
    else:
        assert batched is None


def by_line_texts(block: bytes) -> list[str] | None:
    """The text events' data, decoding ``block`` line by line; None if a line is not JSON
    or a text event's data is not a string."""
    found = []
    for line in block.split(b"\n"):
        if line.strip():
            try:
                event = json.loads(line.decode("utf-8"))
            except ValueError:
                return None
            if isinstance(event, dict) and event.get("event") == "text":
                if not isinstance(event.get("data"), str):
                    return None
                found.append(event["data"])
    return found


OPENING, COMPACT = b'{"event": "text", "data": ', b'{"event":"text","data":'


# Blocks of text event lines, most as a server writes them, some not: other events, or
# between the opening and the end of the line, whatever might make lines hold one value
# between them (two strings on one line, a list across two lines).
strings = st.sampled_from([b'"x"', b' "\\u00e9"', b'"a\\"}b"', b'""', '"\u00e9"'.encode()])
tokens = [b'"x"', b'"', b"[", b"]", b",", b" ", b"\\", b'\\"', b"1", b"{", b"}", b":", b"\n"]
tokens += [b'"x", "y"', b'["x"', b'"y"]']
odd_lines = st.tuples(
    st.lists(st.sampled_from(tokens), max_size=4).map(b"".join),
    st.sampled_from([b"}", b'"}', b"} ", b""]),
)
START = b'{"event": "start", "data": {"model": "m"}}'
TWO_ON_A_LINE = [b'"x"', (b'"x", "y"', b"}")]
A_LIST_ACROSS_LINES = [(b'["x"', b"}"), (b'"y"], "z"', b"}")]


@given(
    st.sampled_from([OPENING, COMPACT]),
    st.lists(st.one_of(strings, strings, odd_lines, st.just(START)), min_size=1, max_size=8),
)
@example(OPENING, TWO_ON_A_LINE)
@example(COMPACT, A_LIST_ACROSS_LINES)
@settings(max_examples=2000, deadline=None)
def test_the_text_event_fast_path_gives_what_line_by_line_gives(
    opening: bytes, lines: list[bytes | tuple[bytes, bytes]]
) -> None:
    from flowgpt_magic.providers.flowgpt import text_event_data

    block = b"\n".join(
        START
        if line == START
        else opening + b"".join(line)
        if isinstance(line, tuple)
        else opening + line + b"}"
        for line in lines
    )
    expected = by_line_texts(block)
    fast = text_event_data(block)
    if fast is not None:
        assert fast == expected
    try:
        parsed: list[str] | None = decode([block], NdjsonTextParser())
    except FlowGptError:
        parsed = None
    assert parsed == (None if expected is None else [text for text in expected if text])


@given(st.lists(st.text(), min_size=1, max_size=30), st.sampled_from([OPENING, COMPACT]))
@settings(max_examples=300, deadline=None)
def test_a_run_of_text_events_takes_the_fast_path(texts: list[str], opening: bytes) -> None:
    from flowgpt_magic.providers.flowgpt import text_event_data

    separators = (", ", ": ") if opening == OPENING else (",", ":")
    lines = [json.dumps({"event": "text", "data": t}, separators=separators) for t in texts]
    assert text_event_data("\n".join(lines).encode()) == texts


# -- reasoning left in the content ---------------------------------------------------------


def content_events(pieces: list[str]) -> list[object]:
    """What the OpenAI-compatible parser makes of content that arrives in these pieces."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return decode([stream.encode()], SseParser())


def cut(text: str, sizes: list[int]) -> list[str]:
    """``text`` in pieces of these sizes, cycled."""
    pieces, at = [], 0
    for size in itertools.cycle(sizes):
        if at >= len(text):
            return pieces
        pieces.append(text[at : at + size])
        at += size
    raise AssertionError  # (unreachable: the cycle is endless)


def merged(events: list[object]) -> tuple[str, str]:
    """The reasoning and the answer that events carry, each joined."""
    thought = "".join(e.text for e in events if isinstance(e, Reasoning))
    return thought, "".join(e for e in events if isinstance(e, str))


@given(
    st.text(st.characters(blacklist_characters="<"), max_size=40),
    st.text(max_size=40),
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=20),
    st.sampled_from(["", "\n", "  \n"]),
)
@settings(max_examples=500, deadline=None)
def test_a_think_block_at_the_start_is_reasoning_however_the_content_is_split(
    thought: str, answer: str, sizes: list[int], before: str
) -> None:
    content = f"{before}<think>{thought}</think>\n\n{answer}"
    assert merged(content_events(cut(content, sizes))) == (thought, answer.lstrip("\r\n"))


@given(st.text(min_size=1, max_size=60), st.lists(st.integers(1, 9), min_size=1, max_size=20))
@settings(max_examples=500, deadline=None)
def test_content_without_a_think_block_is_all_answer(text: str, sizes: list[int]) -> None:
    if text.lstrip().startswith("<think>"):
        return
    assert merged(content_events(cut(text, sizes))) == ("", text)
