"""``dialtone-sim``: run the Realtime simulator, or place one simulated call.

dialtone-sim realtime --port 8765 --scenario demo.json
dialtone-sim call --base-url http://127.0.0.1:8000 --auth-token T --say "Hello" --say "Bye"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .scenario import Scenario

__all__ = ["main"]


async def _serve_realtime(args: argparse.Namespace) -> int:
    from .realtime import RealtimeSimulator

    scenario = Scenario.load(args.scenario) if args.scenario else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = RealtimeSimulator(
        scenario, api_key=args.api_key, host=args.host, port=args.port,
        validate=not args.no_validate, expire_after_s=args.expire_after,
    )  # fmt: skip
    async with sim:
        print(f"Realtime simulator at {sim.url}?model=gpt-realtime (Ctrl-C to stop)", flush=True)
        await stop.wait()
        for s in sim.sessions:
            print(f"session {s.index}: {len(s.client_events)} client / {len(s.server_events)} server events, "
                  f"{len(s.violations)} violations", flush=True)  # fmt: skip
    return 0


async def _place_call(args: argparse.Namespace) -> int:
    from .speech import from_wav
    from .twilio_edge import StreamRejected, WebhookRejected, dial

    try:
        call = await dial(
            args.base_url, args.auth_token, public_base_url=args.public_base_url,
            from_=args.from_, to=args.to, one_way_delay_ms=args.delay_ms, jitter_ms=args.jitter_ms,
            burst_ms=args.burst_ms,
        )  # fmt: skip
    except (WebhookRejected, StreamRejected) as exc:
        print(f"call rejected: {exc}", file=sys.stderr)
        return 1
    lines: list[str | bytes] = list(args.say or [])
    if args.wav:
        lines.append(from_wav(args.wav))
    try:
        with contextlib.suppress(TimeoutError):
            await call.wait_quiet(since=0, timeout=args.timeout)  # the greeting, if any
        for line in lines:
            await call.say(line)
            await call.wait_quiet(timeout=args.timeout)
    except (TimeoutError, ConnectionError) as exc:
        print(f"call ended early: {exc!r}", file=sys.stderr)
    finally:
        await call.hangup()
    print(f"call {call.call_sid} (stream {call.stream_sid})")
    print(f"  frames sent      {len(call.sent_audio) // 160}")
    print(f"  agent ms heard   {len(call.heard) // 8}")
    print(f"  media messages   {len(call.media_received)}")
    print(f"  marks echoed     {len(call.marks_echoed)}")
    print(f"  clears           {len(call.clears)}")
    print(f"  ended by         {call.ended_by}")
    for error in call.protocol_errors[:20]:
        print(f"  protocol error   {error}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialtone-sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rt = sub.add_parser("realtime", help="serve the OpenAI Realtime API simulator")
    rt.add_argument("--host", default="127.0.0.1")
    rt.add_argument("--port", type=int, default=8765)
    rt.add_argument("--scenario", help="scenario JSON file")
    rt.add_argument("--api-key", help="require this bearer key")
    rt.add_argument("--no-validate", action="store_true", help="skip SDK validation (load tests)")
    rt.add_argument("--expire-after", type=float, help="expire sessions after this many seconds")
    call = sub.add_parser("call", help="place one simulated Twilio call")
    call.add_argument("--base-url", default="http://127.0.0.1:8000")
    call.add_argument("--auth-token", required=True)
    call.add_argument("--public-base-url")
    call.add_argument("--say", action="append", help="a caller line (repeatable)")
    call.add_argument("--wav", help="a WAV file the caller plays after the --say lines")
    call.add_argument("--from", dest="from_", default="+15005550001")
    call.add_argument("--to", default="+15005550006")
    call.add_argument("--delay-ms", type=float, default=0, help="one-way network delay")
    call.add_argument("--jitter-ms", type=float, default=0, help="random extra delay per message (order kept)")
    call.add_argument("--burst-ms", type=float, default=0, help="deliver messages in bursts this far apart")
    call.add_argument("--timeout", type=float, default=30, help="seconds to wait for each reply")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dialtone-sim`` script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run = _serve_realtime if args.command == "realtime" else _place_call
    sys.exit(asyncio.run(run(args)))
