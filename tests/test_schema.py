"""Answers as Python objects (--schema): asked for as OpenAI's API takes a schema (the
official client's request is the reference), checked when they come, asked again once
when they do not follow it, refused where the protocol cannot ask. Against the bundled
server's OpenAI dialect (a real server on loopback, which keeps to the schema's shape as a
grammar does), in a shell and in a real kernel; the real models' tests are in
test_real_servers.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.schema import schema_of
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer

REVIEW = """
from typing import Literal
import pydantic

class Address(pydantic.BaseModel):
    city: str

class Review(pydantic.BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    score: int = pydantic.Field(ge=1, le=5, description="1 (bad) to 5 (good)")
    where: Address | None = None
    tags: list[str]
"""


@pytest.fixture
def served(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return flowgpt_server


def run(shell: InteractiveShell, cell: str) -> BaseException | None:
    result = shell.run_cell(cell)
    return result.error_in_exec or result.error_before_exec


def test_the_request_asks_for_the_schema_as_the_official_client_does(
    shell: InteractiveShell, served: LocalServer
) -> None:
    import openai

    assert run(shell, REVIEW) is None
    review = shell.user_ns["Review"]
    client = openai.OpenAI(base_url=served.url.removesuffix(PATH) + OPENAI_PATH, api_key="k")
    try:
        parsed = client.chat.completions.parse(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Judge it."}],
            response_format=review,
        )
    finally:
        client.close()
    theirs = served.state.requests[-1].body
    assert run(shell, "%%flowgpt -m openai:gpt-4o --schema Review\nJudge it.") is None
    ours = served.state.requests[-1].body
    assert ours["response_format"] == theirs["response_format"]
    assert ours["response_format"]["json_schema"]["strict"] is True
    # The same answer, parsed by them and by us: an instance of the model.
    value = shell.user_ns["_flowgpt"]
    assert type(value) is review and value == parsed.choices[0].message.parsed
    assert value.where.city == "offline" and value.tags == ["offline"]


def test_a_dataclass_a_typeddict_a_dict_and_a_list_give_their_values(
    shell: InteractiveShell, served: LocalServer
) -> None:
    setup = """
import dataclasses
from typing import Literal, TypedDict

@dataclasses.dataclass
class Point:
    x: int
    y: float
    label: Literal["a", "b"] | None

class Person(TypedDict):
    name: str
    age: int

spec = {"type": "object", "title": "My spec", "properties": {"ok": {"type": "boolean"}}}
"""
    assert run(shell, setup) is None
    assert run(shell, "%%flowgpt -m openai:gpt-4o --schema Point -o point\nWhere?") is None
    point = shell.user_ns["point"]
    assert point == shell.user_ns["Point"](x=1, y=1.5, label="a")
    sent = served.state.requests[-1].body["response_format"]["json_schema"]
    assert sent["name"] == "Point" and sent["schema"]["additionalProperties"] is False
    assert sent["schema"]["required"] == ["x", "y", "label"]

    assert run(shell, "%%flowgpt -m openai:gpt-4o --schema Person\nWho?") is None
    assert shell.user_ns["_flowgpt"] == {"name": "offline", "age": 1}

    assert run(shell, "%%flowgpt -m openai:gpt-4o --schema spec\nOK?") is None
    assert shell.user_ns["_flowgpt"] == {"ok": True}
    assert served.state.requests[-1].body["response_format"]["json_schema"]["name"] == "My_spec"

    # A list goes wrapped in an object (OpenAI's API takes one at the top), and comes back
    # a list.
    assert run(shell, "%%flowgpt -m openai:gpt-4o --schema list[Point]\nWhere all?") is None
    assert shell.user_ns["_flowgpt"] == [shell.user_ns["Point"](x=1, y=1.5, label="a")]
    sent = served.state.requests[-1].body["response_format"]["json_schema"]
    assert sent["name"] == "PointList" and sent["schema"]["required"] == ["items"]


def test_an_answer_that_does_not_follow_is_asked_again_once_told_what_was_wrong(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(shell, REVIEW) is None
    wrong = '{"sentiment": "great", "score": 4, "where": null, "tags": []}'
    cell = f"%%flowgpt -m openai:gpt-4o --schema Review\n/echo\n{wrong}"
    assert run(shell, cell) is None
    first, second = (r.body for r in served.state.requests)
    assert second["messages"][:-2] == first["messages"]
    assert second["messages"][-2] == {"role": "assistant", "content": wrong}
    told = second["messages"][-1]
    assert told["role"] == "user" and "sentiment: Input should be 'positive'" in told["content"]
    value = shell.user_ns["_flowgpt"]
    assert (value.sentiment, value.score) == ("positive", 1)
    # One exchange: the prompt as asked, the answer that followed; its tokens both answers'.
    (record,) = magics.conversation
    assert record.prompt == f"/echo\n{wrong}" and record.answer == json.dumps(
        {"sentiment": "positive", "score": 1, "where": {"city": "offline"}, "tags": ["offline"]}
    )
    assert record.asked_again is not None and "sentiment" in record.asked_again
    assert record.usage is not None and record.usage.output_tokens == len(wrong.split()) + len(
        record.answer.split()
    )
    out = capsys.readouterr()
    assert "The answer did not follow Review (sentiment: Input should be" in out.err
    assert "asked again" in out.err
    assert "The first answer did not follow the schema" in out.out  # (the notice, below it)


def test_a_second_answer_that_does_not_follow_fails_in_one_line_and_records_nothing(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics
) -> None:
    # The server keeps to the schema's shape, not to its bounds (nor does every grammar).
    setup = (
        "import pydantic\nclass Strict(pydantic.BaseModel):\n    score: int = pydantic.Field(ge=5)"
    )
    assert run(shell, setup + "\n_flowgpt = 'before'") is None
    error = run(shell, "%%flowgpt -m openai:gpt-4o --schema Strict\nScore it.")
    assert isinstance(error, UsageError)
    assert said(error) == (
        "The answer did not follow Strict twice: score: Input should be greater than or equal "
        'to 5. What came: {"score": 1}. Nothing was added to the conversation; ask again, or '
        "describe the values in the prompt."
    )
    assert len(served.state.requests) == 2
    assert len(magics.conversation) == 0 and shell.user_ns["_flowgpt"] == "before"


@pytest.mark.parametrize(
    ("options", "wrong"),
    [
        ("-m flowgpt --schema Review", "FlowGPT's protocol cannot ask for JSON or for a schema"),
        ("-m openai:gpt-4o --schema Review -f text", "-f text does not go with it"),
        (
            "-m openai:gpt-4o --schema Review -p response_format={}",
            "--schema sends its own response_format",
        ),
        ("-m openai:gpt-4o --schema Nothing", "--schema Nothing names 'Nothing', which is not"),
        ("-m openai:gpt-4o --schema number", "number is a int."),
        ("-m openai:gpt-4o --schema 'dict[str, int]'", "--schema takes the name of a class"),
    ],
)
def test_a_schema_that_cannot_be_asked_for_is_refused_before_sending(
    shell: InteractiveShell, served: LocalServer, options: str, wrong: str
) -> None:
    assert run(shell, REVIEW + "\nnumber = 3") is None
    error = run(shell, f"%%flowgpt {options}\nJudge it.")
    assert isinstance(error, UsageError) and wrong in said(error)
    assert "\n" not in said(error) and served.state.requests == []


def test_the_schemas_fields_become_typed_columns_with_each(
    shell: InteractiveShell, served: LocalServer
) -> None:
    setup = """
import pandas as pd
df = pd.DataFrame({"text": ["Great!", "/fail 400", "Meh."]})
"""
    assert run(shell, REVIEW + setup) is None
    cell = "%%flowgpt -m openai:gpt-4o --each df --schema Review --into review\n{row.text}"
    assert run(shell, cell) is None
    df = shell.user_ns["df"]
    assert list(df.columns) == [
        "text",
        "review.sentiment",
        "review.score",
        "review.where",
        "review.tags",
    ]
    assert str(df["review.sentiment"].dtype) == "category"
    assert list(df["review.sentiment"].cat.categories) == ["positive", "negative", "neutral"]
    assert str(df["review.score"].dtype) == "Int64"
    assert df["review.score"].tolist()[0::2] == [1, 1] and df["review.score"].isna()[1]
    answers = shell.user_ns["_flowgpt"]
    assert type(answers[0]) is shell.user_ns["Review"] and answers[1] is None
    assert list(shell.user_ns["_flowgpt_errors"]) == [1]


def test_a_terminal_shows_the_answer_set_aside_then_the_one_that_follows() -> None:
    import io

    from flowgpt_magic.display import TextView
    from flowgpt_magic.record import Record

    stream = io.StringIO()
    view = TextView(footer=False, stream=stream)
    view.extend(['{"a": ', "2}"])
    view.again("asked again")
    view.extend(['{"a": 1}'])
    view.finish(Record("p", '{"a": 1}', "m"))
    assert stream.getvalue() == '{"a": 2}\n{"a": 1}\n'
    assert view.pieces == ['{"a": 1}']


def test_strict_schemas_are_the_official_clients() -> None:
    import dataclasses

    import pydantic
    from openai.lib._pydantic import to_strict_json_schema

    class Inner(pydantic.BaseModel):
        n: int | None = None

    class Outer(pydantic.BaseModel):
        inner: Inner = pydantic.Field(description="the inner one")  # (a $ref with a sibling)
        many: list[Inner]
        mapping: dict[str, float]

    assert schema_of(Outer, "Outer").json_schema == to_strict_json_schema(Outer)

    @dataclasses.dataclass
    class Plain:
        a: int
        b: list[str]

    # A plain dataclass is described from its type hints, as pydantic would (less titles).
    adapted = to_strict_json_schema(pydantic.TypeAdapter(Plain))
    ours = schema_of(Plain, "Plain").json_schema
    for name in ("a", "b"):
        adapted["properties"][name].pop("title")
    assert ours == adapted


def test_pydantic_is_not_imported_to_load_the_extension_nor_for_a_dataclass(
    served: LocalServer,
) -> None:
    code = (
        "import sys, dataclasses\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'flowgpt_magic')\n"
        "loaded = 'pydantic' in sys.modules\n"
        "ip.run_cell('import dataclasses\\n@dataclasses.dataclass\\nclass P:\\n    x: int')\n"
        "ip.run_cell('%%flowgpt -m openai:gpt-4o --schema P\\nWhere?')\n"
        "print(loaded, 'pydantic' in sys.modules, ip.user_ns['_flowgpt'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "False False P(x=1)"
