"""The breaker's time-based sliding window: ``buckets`` buckets spanning ``window`` seconds.

Running totals (``calls``, ``fails``, ``slows``) make recording and reading O(1); a bucket
that leaves the window is subtracted when the window advances. The fields are public (within
the policies stage) so the breaker's success fast path can update them inline.
"""

from __future__ import annotations

import math

__all__ = ["SlidingWindow"]


class SlidingWindow:
    """Outcome counts over the last ``window`` seconds, in ``buckets`` buckets."""

    __slots__ = (
        "b_calls",
        "b_fails",
        "b_slows",
        "bucket_end",
        "calls",
        "cur_calls",
        "cur_fails",
        "cur_slows",
        "epoch",
        "fails",
        "n",
        "slows",
        "width",
    )

    def __init__(self, window: float, buckets: int, now: float) -> None:
        self.n = buckets
        self.width = window / buckets
        self.b_calls: list[int] = []
        self.b_fails: list[int] = []
        self.b_slows: list[int] = []
        self.calls = self.fails = self.slows = 0
        self.cur_calls = self.cur_fails = self.cur_slows = 0
        self.epoch = 0
        self.bucket_end = 0.0
        self.restart(now)

    def advance(self, now: float) -> None:
        """Move to the bucket holding ``now`` (completed buckets go to the ring)."""
        epoch = math.floor(now / self.width)
        old = self.epoch
        if epoch <= old:  # float rounding at a bucket edge, or a clock that went back
            return
        n = self.n
        if epoch - old >= n:
            self.clear()
        else:
            calls, fails, slows = self.b_calls, self.b_fails, self.b_slows
            i = old % n
            calls[i], fails[i], slows[i] = self.cur_calls, self.cur_fails, self.cur_slows
            for e in range(old + 1, epoch + 1):
                j = e % n  # the slot of bucket e - n, which leaves the window
                self.calls -= calls[j]
                self.fails -= fails[j]
                self.slows -= slows[j]
                calls[j] = fails[j] = slows[j] = 0
            self.cur_calls = self.cur_fails = self.cur_slows = 0
        self.epoch = epoch
        self.bucket_end = (epoch + 1) * self.width

    def clear(self) -> None:
        n = self.n
        self.b_calls = [0] * n
        self.b_fails = [0] * n
        self.b_slows = [0] * n
        self.calls = self.fails = self.slows = 0
        self.cur_calls = self.cur_fails = self.cur_slows = 0

    def restart(self, now: float) -> None:
        """Empty the window and start it at ``now``."""
        self.clear()
        self.epoch = epoch = math.floor(now / self.width)
        self.bucket_end = (epoch + 1) * self.width

    def record(self, now: float, failure: bool, slow: bool) -> int:
        """Count one outcome at ``now``; returns the calls now in the window."""
        if now >= self.bucket_end:
            self.advance(now)
        self.cur_calls += 1
        calls = self.calls = self.calls + 1
        if failure:
            self.cur_fails += 1
            self.fails += 1
        if slow:
            self.cur_slows += 1
            self.slows += 1
        return calls

    def rates(self) -> tuple[float, float, int]:
        """``(failure rate, slow-call rate, calls)`` over the window."""
        calls = self.calls
        if not calls:
            return 0.0, 0.0, 0
        return self.fails / calls, self.slows / calls, calls
