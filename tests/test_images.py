"""Prompts that carry what the notebook shows: images (a plot, a figure, a file) and data
summaries, sent to the local server's OpenAI dialect (which checks every image part) and
compared with what the official ``openai`` client sends for the same content."""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from messages import said
from PIL import Image

from flowgpt_magic.attachments import (
    MAX_SIDE,
    Picture,
    picture_of,
    picture_of_bytes,
    picture_of_file,
    summary_of,
)
from flowgpt_magic.exceptions import InvalidRequestError
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer

matplotlib.use("agg")
from matplotlib.figure import Figure

MODEL = "openai:gpt-4o-mini"


@pytest.fixture
def openai_base(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    monkeypatch.setenv("OPENAI_BASE_URL", base)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-local")
    return base


def figure() -> Figure:
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([1, 4, 9, 16])
    return fig


def png_of(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def last_user(server: LocalServer) -> Any:
    return server.state.requests[-1].body["messages"][-1]["content"]


# -- what is sent ----------------------------------------------------------------------------


def test_a_figure_goes_as_the_official_client_sends_an_image(
    shell: InteractiveShell, flowgpt_server: LocalServer, openai_base: str
) -> None:
    import openai

    fig = figure()
    shell.user_ns["fig"] = fig
    result = shell.run_cell(f"%%flowgpt -m {MODEL} -t 0\nWhat does this plot show? {{fig}}")
    assert result.error_in_exec is None
    ours = flowgpt_server.state.requests[-1].body

    content = [
        {"type": "text", "text": "What does this plot show? [image 1]"},
        {"type": "image_url", "image_url": {"url": data_url(png_of(fig))}},
    ]
    with openai.OpenAI(base_url=openai_base, api_key="sk-test-local") as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    theirs = flowgpt_server.state.requests[-1].body
    assert ours == theirs
    assert "Images: 1 (PNG " in answer and shell.user_ns["_flowgpt"] == answer


def test_a_pil_image_an_ipython_image_and_a_file_each_go_as_an_image(
    shell: InteractiveShell, flowgpt_server: LocalServer, openai_base: str, tmp_path: Path
) -> None:
    from IPython.display import Image as IPythonImage

    photo = Image.new("RGB", (40, 30), "teal")
    jpeg = io.BytesIO()
    photo.save(jpeg, format="JPEG")
    (tmp_path / "photo.jpg").write_bytes(jpeg.getvalue())
    shell.user_ns.update(pil=photo, shown=IPythonImage(data=png_of(figure())))
    cell = f"%%flowgpt -m {MODEL} -i {tmp_path / 'photo.jpg'}\nCompare {{pil}} with {{shown}}."
    assert shell.run_cell(cell).error_in_exec is None

    text, *images = last_user(flowgpt_server)
    assert text == {"type": "text", "text": "Compare [image 1] with [image 2]."}
    urls = [image["image_url"]["url"] for image in images]
    assert [url.partition(";")[0] for url in urls] == ["data:image/png"] * 2 + ["data:image/jpeg"]
    sent = Image.open(io.BytesIO(base64.b64decode(urls[0].partition(",")[2])))
    assert sent.size == (40, 30) and sent.getpixel((0, 0)) == (0, 128, 128)
    assert base64.b64decode(urls[2].partition(",")[2]) == jpeg.getvalue()


def test_an_image_too_large_for_servers_is_scaled_down() -> None:
    picture = picture_of(Image.new("RGB", (6000, 1500), "white"), "big")
    assert picture is not None
    assert (picture.width, picture.height) == (MAX_SIDE, MAX_SIDE // 4)
    assert Image.open(io.BytesIO(picture.data)).size == (MAX_SIDE, MAX_SIDE // 4)


def test_without_pillow_an_image_too_large_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = io.BytesIO()
    Image.new("RGB", (3000, 100), "white").save(big, format="PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)  # (as if Pillow were not installed)
    with pytest.raises(InvalidRequestError) as refused:
        picture_of_bytes(big.getvalue(), "wide.png")
    assert str(refused.value).startswith("The image from wide.png is too large to send (3000x100")
    assert "Install Pillow (pip install pillow)" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_saved_image_that_is_not_one_is_refused_when_read() -> None:
    with pytest.raises(ValueError, match="not a PNG, JPEG or GIF"):
        Picture.from_json({"mime": "image/png", "data": base64.b64encode(b"<html>").decode()})


def test_the_conversation_keeps_the_image_for_a_follow_up(
    shell: InteractiveShell, flowgpt_server: LocalServer, openai_base: str
) -> None:
    shell.user_ns["fig"] = fig = figure()
    shell.run_cell(f"%%flowgpt -m {MODEL}\nWhat is this? {{fig}}")
    shell.run_cell(f"%%flowgpt -m {MODEL}\nAnd its highest point?")
    question, _answer, follow_up = flowgpt_server.state.requests[-1].body["messages"]
    assert question["content"][1]["image_url"]["url"] == data_url(png_of(fig))
    assert follow_up == {"role": "user", "content": "And its highest point?"}
    # A cap on the context's characters counts the image (about 1,100 tokens, 4 each).
    shell.run_line_magic("config", "FlowGptMagics.history_chars = 3000")
    shell.run_cell(f"%%flowgpt -m {MODEL}\nOnce more?")
    assert len(flowgpt_server.state.requests[-1].body["messages"]) == 3


def test_a_dry_run_says_what_was_filled_in_and_sends_nothing(
    shell: InteractiveShell, flowgpt_server: LocalServer, openai_base: str, capsys: Any
) -> None:
    shell.user_ns.update(fig=figure(), df=pd.DataFrame({"x": range(50)}))
    shell.run_cell(f"%%flowgpt -m {MODEL} --dry-run\nExplain {{fig}} with {{df}}")
    said = capsys.readouterr().out
    assert "    {fig}: image 1, PNG " in said and ", from fig\n" in said
    assert "    {df}: DataFrame summary, " in said
    assert flowgpt_server.state.requests == []


# -- what is refused, in one line --------------------------------------------------------------


def test_a_text_only_protocol_refuses_images_before_sending(
    shell: InteractiveShell, magics: FlowGptMagics, flowgpt_server: LocalServer
) -> None:
    shell.user_ns["fig"] = figure()
    error = shell.run_cell("%%flowgpt\nExplain {fig}").error_in_exec
    assert said(error).startswith("gpt-3.5-turbo takes no images ({fig} is one): its protocol")
    assert "\n" not in said(error) and flowgpt_server.state.requests == []
    assert len(magics.conversation) == 0


def test_what_is_not_an_image_says_so(
    shell: InteractiveShell, flowgpt_server: LocalServer, openai_base: str, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    error = shell.run_cell(f"%%flowgpt -m {MODEL} -i {tmp_path / 'notes.txt'}\nWhat?").error_in_exec
    assert "notes.txt is not a PNG, JPEG or GIF image" in said(error)
    error = shell.run_cell(f"%%flowgpt -m {MODEL} -i {tmp_path / 'gone.png'}\nWhat?").error_in_exec
    assert "could not read it (No such file or directory)" in said(error)
    assert flowgpt_server.state.requests == []
    with pytest.raises(Exception, match="is not a PNG"):
        picture_of_file(str(tmp_path / "notes.txt"))


# -- data ----------------------------------------------------------------------------------------


def test_a_dataframe_goes_as_a_labelled_summary_with_its_first_and_last_rows() -> None:
    frame = pd.DataFrame({"city": [f"c{n}" for n in range(1000)], "people": range(1000)})
    kind, text = summary_of(frame, 4000) or ("", "")
    assert kind == "DataFrame"
    assert text.startswith("pandas DataFrame, 1,000 rows x 2 columns; dtypes: city ")
    assert "people int64" in text
    assert "| 0 | c0 | 0 |" in text and "| 999 | c999 | 999 |" in text
    assert "| 500 |" not in text


def test_a_series_an_array_a_list_and_a_string_are_summed_up_within_the_cap() -> None:
    assert (summary_of(pd.Series([1.5, 2.5], name="v"), 4000) or ("",))[0] == "Series"
    kind, text = summary_of(np.arange(10_000).reshape(100, 100), 4000) or ("", "")
    assert kind == "ndarray" and "shape (100, 100), dtype int64" in text and "..." in text
    kind, text = summary_of(list(range(5000)), 200) or ("", "")
    assert kind == "list" and text.startswith("list of 5,000 items; the first 10: [0, 1,")
    kind, text = summary_of("word " * 2000, 500) or ("", "")
    assert text.endswith("\n[… cut: 500 of 10,000 characters sent]") and len(text) < 560
    assert summary_of([1, 2, 3], 4000) is None and summary_of("short", 4000) is None


def test_value_chars_caps_what_a_data_value_puts_in_a_prompt(
    shell: InteractiveShell, flowgpt_server: LocalServer, openai_base: str
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.value_chars = 300")
    shell.user_ns["df"] = pd.DataFrame({"x": range(10_000), "y": range(10_000)})
    shell.run_cell(f"%%flowgpt -m {MODEL}\nDescribe {{df}}")
    sent = last_user(flowgpt_server)
    assert sent.startswith("Describe pandas DataFrame, 10,000 rows x 2 columns")
    assert sent.endswith("characters sent]") and len(sent) < 400


# -- a real kernel, with matplotlib's inline backend ---------------------------------------------


@pytest.fixture
def notebook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_out_n_sends_the_plot_a_cell_showed_and_a_saved_notebook_keeps_it_once(
    flowgpt_server: LocalServer, openai_base: str, notebook_dir: Path
) -> None:
    import nbformat
    from nbclient import NotebookClient

    sources = [
        "%load_ext flowgpt_magic\nimport matplotlib.pyplot as plt",
        "plt.plot([1, 4, 9, 16])",  # [2]: shows a plot; its result is the lines drawn
        f"%%flowgpt -m {MODEL}\nWhat does this plot show? {{Out[2]}}",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    (plot,) = [o for o in nb.cells[1].outputs if "image/png" in o.get("data", {})]
    shown = base64.b64decode(plot["data"]["image/png"])

    text, image = last_user(flowgpt_server)
    assert text == {"type": "text", "text": "What does this plot show? [image 1]"}
    assert image["image_url"]["url"] == data_url(shown)
    (answer,) = nb.cells[2].outputs
    assert "Images: 1 (PNG " in answer["data"]["text/markdown"]
    # The answer's record refers to the plot by its hash: the notebook holds it once.
    (saved,) = answer["metadata"]["flowgpt_magic"]["images"]
    assert "data" not in saved and saved["in_output"] is True
    assert json.dumps(nb).count(plot["data"]["image/png"]) == 1
    path = notebook_dir / "plot.ipynb"
    nbformat.write(nb, path)

    # Rebuilt in a new kernel, the conversation has the plot again, for a follow-up.
    again = nbformat.v4.new_notebook()
    again.cells = [
        nbformat.v4.new_code_cell("%load_ext flowgpt_magic"),
        nbformat.v4.new_code_cell(f"%flowgpt_history --from-notebook {path}"),
        nbformat.v4.new_code_cell(f"%%flowgpt -m {MODEL}\nWhere does it peak?"),
    ]
    NotebookClient(again, kernel_name="python3", timeout=60).execute()
    question, _answer, follow_up = flowgpt_server.state.requests[-1].body["messages"]
    assert question["content"][1]["image_url"]["url"] == data_url(shown)
    assert follow_up["content"] == "Where does it peak?"

    # With the plot's output cleared, the rebuilt exchange goes on without it, as it says.
    nb.cells[1].outputs = []
    nbformat.write(nb, path)
    NotebookClient(again, kernel_name="python3", timeout=60).execute()
    said = "".join(o.get("text", "") for o in again.cells[1].outputs)
    assert "(1 of their images, from cell [2], are no longer in the notebook's outputs" in said
    question = flowgpt_server.state.requests[-1].body["messages"][0]
    assert question["content"] == "What does this plot show? [image 1]"


def test_a_saved_conversation_file_holds_its_images(
    shell: InteractiveShell,
    magics: FlowGptMagics,
    flowgpt_server: LocalServer,
    openai_base: str,
    tmp_path: Path,
) -> None:
    shell.user_ns["fig"] = fig = figure()
    shell.run_cell(f"%%flowgpt -m {MODEL}\nWhat is this? {{fig}}")
    shell.run_line_magic("flowgpt_history", f"--save {tmp_path / 'talk.json'}")
    shell.run_line_magic("flowgpt_history", "--reset")
    shell.run_line_magic("flowgpt_history", f"--load {tmp_path / 'talk.json'}")
    (record,) = magics.conversation
    assert record.images[0].data == png_of(fig) and record.images[0].source == "fig"


def test_out_n_of_a_cell_that_ends_with_its_figure_sends_the_plot_once(
    flowgpt_server: LocalServer, openai_base: str
) -> None:
    import nbformat
    from nbclient import NotebookClient

    sources = [
        "%load_ext flowgpt_magic\nimport matplotlib.pyplot as plt",
        "fig = plt.figure()\nplt.plot([3, 1, 2])\nfig",  # [2]: the figure is its result
        "df = __import__('pandas').DataFrame({'x': range(100)})\ndf.plot()\ndf",  # [3]
        f"%%flowgpt -m {MODEL} --no-history\nAnd this? {{Out[2]}}",
        f"%%flowgpt -m {MODEL} --no-history\nAnd these? {{Out[3]}}",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    figure_cell, frame_cell = (
        r.body["messages"][-1]["content"] for r in flowgpt_server.state.requests
    )
    assert [part["type"] for part in figure_cell] == ["text", "image_url"]
    assert figure_cell[0]["text"] == "And this? [image 1]"
    # A result that is data goes as its summary, the plot the cell showed beside it.
    assert [part["type"] for part in frame_cell] == ["text", "image_url"]
    assert frame_cell[0]["text"].startswith("And these? pandas DataFrame, 100 rows x 1 columns")
    assert frame_cell[0]["text"].endswith(" [image 1]")


def test_a_plot_redrawn_thousands_of_times_is_kept_once_and_decoded_only_when_asked(
    flowgpt_server: LocalServer, openai_base: str
) -> None:
    import nbformat
    from nbclient import NotebookClient

    shown = "get_ipython().magics_manager.registry['FlowGptMagics'].shown"
    sources = [
        "%load_ext flowgpt_magic\nfrom IPython.display import Image, clear_output, display\n"
        "import matplotlib.pyplot as plt, io\nbuffer = io.BytesIO()\n"
        "plt.figure(figsize=(2, 2)); plt.plot([1, 2]); plt.savefig(buffer); plt.close()\n"
        "png = buffer.getvalue()",
        # [2]: an animation: 2,000 frames, each clearing the one before.
        "for frame in range(2_000):\n    clear_output(wait=True)\n    display(Image(png))",
        # [3]: 50 images one after the other: the last few are kept.
        "for frame in range(50):\n    display(Image(png))",
        f"print(len({shown}._by_cell[2]), len({shown}._by_cell[3]),"
        f" all(type(data) is str for _, _, data in {shown}._by_cell[3]))",
        f"%%flowgpt -m {MODEL} --no-history\nWhat is this? {{Out[2]}}",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    # Kept as the messages carried them (text, not decoded): one of cell 2, four of cell 3.
    assert nb.cells[3].outputs[0]["text"] == "1 4 True\n"
    text, image = last_user(flowgpt_server)
    assert text["text"] == "What is this? [image 1]"
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
