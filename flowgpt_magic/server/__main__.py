"""``python -m flowgpt_magic.server``: serve both dialects until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .app import make_app, start_site
from .faults import FAULTS
from .openai import OPENAI_PATH
from .state import PATH, ServerOptions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flowgpt_magic.server",
        description="Serve FlowGPT's anonymous chat protocol locally, with offline answers.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--delay", type=float, default=0.03, help="seconds before each piece (default 0.03)"
    )
    parser.add_argument(
        "--first-delay", type=float, default=0.0, help="seconds before the first piece"
    )
    parser.add_argument(
        "--min-pieces", type=int, default=0, help="pad answers to at least this many pieces"
    )
    parser.add_argument(
        "--fault",
        metavar="FAULT",
        help="commit this fault on every request: "
        + "; ".join(f"{name}: {what}" for name, what in FAULTS.items()),
    )
    args = parser.parse_args(argv)
    if min(args.delay, args.first_delay, args.min_pieces) < 0:
        parser.error("--delay, --first-delay and --min-pieces cannot be negative")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


async def _serve_forever(args: argparse.Namespace) -> None:
    app = make_app(
        ServerOptions(
            delay=args.delay,
            first_delay=args.first_delay,
            min_pieces=args.min_pieces,
            fault=args.fault,
            record=False,  # (nobody reads them here: a server left running keeps nothing)
        )
    )
    try:
        runner, url = await start_site(app, args.host, args.port)
    except OSError as error:
        raise SystemExit(f"Cannot listen on {args.host}:{args.port}: {error.strerror}.") from None
    print(f"flowgpt-magic local server listening; chat endpoint: {url}", flush=True)
    print(f"Use it with:  export FLOWGPT_API_URL={url}", flush=True)
    base = url.removesuffix(PATH) + OPENAI_PATH
    print(f"OpenAI-compatible too:  export OPENAI_BASE_URL={base}", flush=True)
    print("Stop it with Ctrl-C.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
