"""The bundled local server: its command line, and how strictly it checks requests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flowgpt_magic import FlowGpt
from flowgpt_magic.providers.flowgpt import build_body, signed_headers
from flowgpt_magic.server import LocalServer

USER = [{"role": "user", "content": "Hello"}]


async def test_the_command_line_server_prints_its_url_and_answers() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "flowgpt_magic.server", "--port", "0", "--delay", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdout is not None
        first_line = server.stdout.readline()
        url = first_line.split("chat endpoint: ")[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v3/chat-anonymous")
        assert f"export FLOWGPT_API_URL={url}" in server.stdout.readline()

        pieces = [p async for p in FlowGpt.create_async_generator("gemini", USER, api_url=url)]
        assert "".join(pieces).startswith("[Offline answer from the flowgpt-magic local server")

        server.send_signal(signal.SIGINT)
        _, errors = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "Traceback" not in errors


async def post(url: str, headers: dict[str, str], body: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers=headers, data=json.dumps(body)) as response,
    ):
        return response.status, (await response.json())["error"]


def good_body() -> dict[str, Any]:
    return build_body("gpt-3.5-turbo", USER, 0.7)


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


async def test_the_command_line_server_keeps_nothing_of_what_it_was_asked() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "flowgpt_magic.server", "--port", "0", "--delay", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        assert server.stdout is not None
        url = server.stdout.readline().split("chat endpoint: ")[1].strip()
        long = [{"role": "user", "content": "x" * 200_000}]  # (200 kB a request)

        async def ask(times: int) -> None:
            async with aiohttp.ClientSession() as session:
                for _ in range(times):
                    result = FlowGpt.create_async_generator(
                        "gemini", long, api_url=url, session=session
                    )
                    async with result:
                        assert [p async for p in result]

        await ask(20)  # (the server's own start: buffers, caches)
        before = rss_kb(server.pid)
        await ask(200)  # 40 MB of questions
        grown = rss_kb(server.pid) - before
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert grown < 10_000, f"the server grew by {grown:,} kB over 200 requests"


@pytest.mark.parametrize(
    ("headers", "body", "words"),
    [
        ({"x-signature": "0" * 32}, {}, "x-signature is not md5"),
        ({"x-timestamp": "1"}, {}, "x-timestamp is more than 300 s away"),
        ({"x-nonce": "short"}, {}, "x-nonce must be 32 characters"),
        ({"x-flow-device-id": "device"}, {}, "x-flow-device-id must be 'f-'"),
        ({}, {"model": "gemini", "promptId": "model-gemini"}, "model 'gemini' is not a FlowGPT"),
        ({}, {"history": []}, "history must be a list that starts with the assistant's greeting"),
        ({}, {"temperature": 3}, "temperature must be a number from 0 to 2"),
        ({}, {"nsfw": True}, "nsfw must be false"),
        ({}, {"question": ""}, "question must be a non-empty string"),
        ({}, {"extra": 1}, "unexpected field(s) extra"),
    ],
)
async def test_bad_requests_get_a_400_that_says_what_was_wrong(
    headers: dict[str, str], body: dict[str, Any], words: str
) -> None:
    with LocalServer() as server:
        status, error = await post(
            server.url, {**signed_headers(), **headers}, {**good_body(), **body}
        )
        assert server.state.requests == []
    assert status == 400
    assert words in error


async def test_a_missing_field_is_named() -> None:
    body = good_body()
    del body["promptId"]
    with LocalServer() as server:
        status, error = await post(server.url, signed_headers(), body)
    assert (status, error) == (400, "Bad request: missing field(s) promptId.")


async def test_answers_are_deterministic() -> None:
    async def answer(url: str) -> str:
        return "".join(
            [p async for p in FlowGpt.create_async_generator("gpt-4-turbo", USER, api_url=url)]
        )

    with LocalServer() as server:
        assert await answer(server.url) == await answer(server.url)
