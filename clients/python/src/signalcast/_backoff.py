"""Reconnect and retry delays: exponential, capped, with jitter, so that a thousand
clients cut off by the same gateway restart do not all come back in the same
millisecond."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backoff:
    #: The first delay, in seconds.
    initial: float = 0.25
    #: The largest delay, in seconds.
    max: float = 30.0
    #: Each failed attempt multiplies the delay by this.
    multiplier: float = 2.0
    #: The share of each delay taken away at random, 0..1.
    jitter: float = 0.5

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay before attempt ``attempt`` (0 for the first after a failure):
        ``min(max, initial * multiplier**attempt)``, less up to ``jitter`` of it."""
        capped = min(self.max, self.initial * self.multiplier ** max(0, attempt))
        jitter = min(1.0, max(0.0, self.jitter))
        return capped * (1.0 - jitter * rand())
