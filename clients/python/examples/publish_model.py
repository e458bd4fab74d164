"""A model that publishes signals from a plain script over HTTP ingest: a random walk
per symbol, a buy or a sell on each step with its target and stop around the price, and
the ticks of the walk, so that the engine can close the signals it published.

    python examples/publish_model.py --count 20

Its default symbols (PYMODEL1..3) are made up, so that the walk's ticks are the only
prices they have; on real symbols, whose prices come from a market feed, pass
--no-ticks (the walk's prices would close other sources' signals at made-up prices).

The server is --url or SIGNALCAST_URL (its WebSocket URL will do; default
http://127.0.0.1:8080); the producer is --producer (default model-alpha) with its key
from SIGNALCAST_PRODUCER_KEY (default: the embedded default's public dev key, README
step 4). Stops after --count signals. (Only variables signalcast knows: it refuses to
start with an unknown SIGNALCAST_* in its environment.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from decimal import Decimal

from signalcast import NewSignal, NewTick, Producer, now_micros

# The source model-alpha publishes under (fixtures/producers.toml): only a source's own
# producers may publish under its id.
SOURCE_ID = "5eacdd1d-446b-4985-8de0-f44da0e8f005"
DEV_KEY = "dev-alpha-0c1d2e3f4a5b6c7d"
CENT = Decimal("0.0001")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("SIGNALCAST_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--producer", default="model-alpha")
    ap.add_argument("--symbols", default="PYMODEL1,PYMODEL2,PYMODEL3", help="NSE symbols, comma-separated")
    ap.add_argument("--no-ticks", action="store_true", help="publish signals only")
    ap.add_argument("--count", type=int, default=10, help="signals to publish")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between signals")
    ap.add_argument("--seed", type=int, help="for a repeatable walk")
    return ap.parse_args()


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    key = os.environ.get("SIGNALCAST_PRODUCER_KEY", DEV_KEY)
    producer = Producer(args.url, args.producer, key)
    prices = {s.strip(): Decimal(rng.randint(100, 3000)) for s in args.symbols.split(",") if s.strip()}
    refused = 0
    for n in range(args.count):
        symbol = rng.choice(sorted(prices))
        price = (prices[symbol] * Decimal(1 + rng.uniform(-0.01, 0.01))).quantize(CENT)
        prices[symbol] = price
        side = rng.choice(("buy", "sell"))
        up, down = (price * Decimal("1.01")).quantize(CENT), (price * Decimal("0.99")).quantize(CENT)
        now = now_micros()
        signal = NewSignal(
            source_id=SOURCE_ID,
            source_type="algorithm",
            symbol=symbol,
            exchange="NSE",
            category="equity",
            signal_type=side,
            entry_price=price,
            target_price=up if side == "buy" else down,
            stop_loss=down if side == "buy" else up,
            quantity_recommended=rng.randint(1, 100),
            confidence=round(rng.uniform(80, 97), 2),
            generated_at=now,
            expires_at=now + 3_600_000_000,
        )
        # The tick first: it becomes the signal's market snapshot (and entry price);
        # later ticks of the walk may reach the signal's target or stop.
        if not args.no_ticks:
            spread = (price * Decimal("0.0002")).quantize(CENT)
            tick = NewTick(symbol, "NSE", price - spread, price + spread, price, rng.randint(1, 1000))
            await producer.publish_ticks([tick])
        result = await producer.publish_one(signal)
        detail = f" ({result.error}: {result.message})" if result.error else ""
        print(f"{n + 1}/{args.count} {result.status} {side.upper()} {symbol} @ {price} id {result.id}{detail}", flush=True)
        refused += result.status == "refused"
        if n + 1 < args.count:
            await asyncio.sleep(args.interval)
    return 1 if refused else 0


def main() -> None:
    raise SystemExit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
