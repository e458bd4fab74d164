"""A bot that follows a watchlist: prints each signal on its symbols and, later, what
became of it (target hit, stop hit, expired, closed), resuming across reconnects.

    SIGNALCAST_TOKEN=$(cargo run --release -q -- token --user u-premium-1) \\
        python examples/follow_watchlist.py --count 20

The URL and token come from --url/--token or SIGNALCAST_URL/SIGNALCAST_TOKEN (prefer
the environment for the token: a command line is visible to every user of the machine).
--count N stops after N signal updates, --seconds S after S seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from signalcast import (
    Disconnected,
    Filter,
    Refused,
    Resumed,
    SignalClosed,
    SignalUpdate,
    Subscribed,
    Subscriber,
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("SIGNALCAST_URL", "ws://127.0.0.1:8080/ws"))
    ap.add_argument("--token", default=os.environ.get("SIGNALCAST_TOKEN"))
    ap.add_argument("--channel", default="signals_premium", help="a channel of your tier or a lower one")
    # The fixtures' symbols, README's HTTPDEMO, and those of examples/publish_model.py.
    default = "RELIANCE,TCS,INFY,HTTPDEMO,PYMODEL1,PYMODEL2,PYMODEL3"
    ap.add_argument("--symbols", default=default, help="the watchlist, comma-separated")
    ap.add_argument("--snapshot", type=int, default=0, help="start with the last N signals of the watchlist")
    ap.add_argument("--count", type=int, help="stop after this many signal updates (opens and closes)")
    ap.add_argument("--seconds", type=float, help="stop after this many seconds")
    args = ap.parse_args()
    if not args.token:
        ap.error("no token: pass --token or set SIGNALCAST_TOKEN")
    return args


async def follow(args: argparse.Namespace) -> None:
    watchlist = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    seen = 0
    # A real bot would pass a callable that asks its login service for a fresh token.
    async with Subscriber(args.url, token=args.token) as sub:
        await sub.subscribe(args.channel, filter=Filter(symbols=watchlist), snapshot=args.snapshot or None)
        async for event in sub:
            if isinstance(event, SignalClosed):
                s, o = event.signal, event.outcome
                print(
                    f"#{event.seq} {s.status.upper()} {s.signal_type} {s.symbol} "
                    f"entry {o.entry_price} exit {o.exit_price} return {o.return_pct}%",
                    flush=True,
                )
            elif isinstance(event, SignalUpdate):
                s = event.signal
                last = s.market.last if s.market else "no tick"
                mark = " (snapshot)" if event.snapshot else ""
                print(
                    f"#{event.seq} {s.signal_type.upper()} {s.symbol} @ {s.entry_price} -> {s.target_price} "
                    f"(stop {s.stop_loss}), {s.confidence}%, last {last}{mark}",
                    flush=True,
                )
            elif isinstance(event, Subscribed):
                print(f"following {', '.join(watchlist)} on {event.channel}", flush=True)
            elif isinstance(event, Resumed) and not event.recovered:
                print(f"missed signals after #{event.since.seq}; live from #{event.head}", file=sys.stderr)
            elif isinstance(event, Refused):
                print(f"refused: {event.code}: {event.message}", file=sys.stderr)
            elif isinstance(event, Disconnected) and not event.reconnecting:
                print(f"closed for good: {event.code} {event.reason}", file=sys.stderr)
            if isinstance(event, SignalUpdate):
                seen += 1
                if args.count is not None and seen >= args.count:
                    return


def main() -> None:
    args = parse_args()
    try:
        asyncio.run(asyncio.wait_for(follow(args), args.seconds))
    except asyncio.TimeoutError:
        pass  # --seconds is up
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
