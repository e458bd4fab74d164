"""The two examples run as programs against a real signalcast process: the model
publishes over HTTP ingest, the bot follows a watchlist and prints the signals and
their outcomes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from conftest import run
from harness import PRODUCER_KEY, Server, producer, token

from signalcast import NewTick

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_publish_model_and_follow_watchlist(server: Server) -> None:
    env = dict(os.environ, SIGNALCAST_URL=server.ws, SIGNALCAST_TOKEN=token("u-premium-1"))
    env["SIGNALCAST_PRODUCER_KEY"] = PRODUCER_KEY
    env.pop("SIGNALCAST_BIN", None)
    # Five signals and at least one close: the bot stops after six updates.
    follow = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "follow_watchlist.py"), "--symbols", "EXAAA,EXBBB", "--count", "6", "--seconds", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # printed once the subscription stands
        assert first.startswith("following EXAAA, EXBBB on signals_premium"), first
        model = subprocess.run(
            # The URL from SIGNALCAST_URL (the WebSocket one: the HTTP base is made of it).
            [sys.executable, str(EXAMPLES / "publish_model.py"), "--symbols", "EXAAA,EXBBB",
             "--count", "5", "--interval", "0.05", "--seed", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert model.returncode == 0, model.stdout + model.stderr
        published = re.findall(r"^\d/5 accepted (BUY|SELL) (\w+) @ ([\d.]+) id ([\w-]+)$", model.stdout, re.M)
        assert len(published) == 5, model.stdout

        # The walk may have closed a signal already; a tick far from the last price
        # closes every open signal on its symbol in any case.
        side, symbol, price, _ = published[-1]
        far = Decimal(price) * (2 if side == "BUY" else Decimal("0.5"))
        run(producer(server).publish_ticks([NewTick(symbol, "NSE", far, far, far, 1)]))

        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    lines = (first + out).splitlines()
    opens = [m.groups() for m in (re.match(r"#\d+ (BUY|SELL) (\w+) @ ([\d.]+) ", line) for line in lines) if m]
    close = re.compile(r"#\d+ (TARGET_HIT|STOP_HIT) (buy|sell) EX\w+ entry [\d.]+ exit [\d.]+ return -?[\d.]+%$")
    closes = [line for line in lines if close.match(line)]
    assert opens == [p[:3] for p in published], out
    assert closes, out
    assert len(opens) + len(closes) == 6
