"""The provider used directly from Python: the seed document's two examples, as written.

    FLOWGPT_API_URL=http://127.0.0.1:PORT/v3/chat-anonymous python examples/provider_api.py

Without FLOWGPT_API_URL the script starts the bundled local server for itself, since
FlowGPT's public endpoint is not known to work (see the README).
"""

import asyncio
import os
from typing import AsyncGenerator, Dict, List, Optional

from flowgpt_magic import FlowGpt


# Пример использования create_async_generator
async def main():
    model: str = "gpt-3.5-turbo"
    messages: List[Dict[str, str]] = [{"role": "user", "content": "Привет!"}]
    proxy: Optional[str] = None
    temperature: float = 0.7

    async def process_generator(generator: AsyncGenerator[str, None]):
        async for message in generator:
            print(f"Message: {message}")

    generator: AsyncGenerator[str, None] = await FlowGpt.create_async_generator(
        model=model, messages=messages, proxy=proxy, temperature=temperature
    )

    await process_generator(generator)


# Пример 2 с использованием системного сообщения:
async def main_with_system_message():
    model: str = "gpt-3.5-turbo"
    messages: List[Dict[str, str]] = [
        {"role": "system", "content": "Ты - полезный ассистент."},
        {"role": "user", "content": "Привет!"},
    ]
    proxy: Optional[str] = None
    temperature: float = 0.7

    async def process_generator(generator: AsyncGenerator[str, None]):
        async for message in generator:
            print(f"Message: {message}")

    generator: AsyncGenerator[str, None] = await FlowGpt.create_async_generator(
        model=model, messages=messages, proxy=proxy, temperature=temperature
    )

    await process_generator(generator)


async def streamed_in_one_line():
    """The same provider, iterated directly and printed as one growing line."""
    messages = [{"role": "user", "content": "What can you do offline?"}]
    async for piece in FlowGpt.create_async_generator("gemini", messages, temperature=0.2):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    if os.environ.get("FLOWGPT_API_URL"):
        asyncio.run(main())
        asyncio.run(main_with_system_message())
        asyncio.run(streamed_in_one_line())
    else:
        from flowgpt_magic.server import LocalServer

        with LocalServer() as server:
            os.environ["FLOWGPT_API_URL"] = server.url
            print(f"(FLOWGPT_API_URL was not set: using the bundled server at {server.url})")
            asyncio.run(main())
            asyncio.run(main_with_system_message())
            asyncio.run(streamed_in_one_line())
