"""Each server's health in a run, and its circuit breaker.

A server that fails ``pause_server_after`` attempts in a row is paused (the breaker opens) for ``pause_s``; when
the pause is over it gets exactly one probe request (half-open), and an answer puts it back in rotation (closed).
A failed probe pauses it again for twice as long, up to ``max_pause_s``. A server that has never sent an HTTP
response and refused ``DEAD_AFTER_REFUSED`` connections in a row is taken out for the run instead: nothing listens
there, and a run against it should stop in seconds. A server that refuses the key, model or URL is taken out too.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_AFTER_REFUSED = 2  # refused connections in a row, from a server that never responded, that take it out


def cooldown(pauses: int, pause_s: float, max_pause_s: float) -> float:
    """The length of a server's ``pauses``-th pause in a row: ``pause_s`` doubled with each, up to ``max_pause_s``."""
    return min(pause_s * 2.0 ** min(pauses - 1, 60), max_pause_s)


@dataclass
class ServerHealth:
    """One base URL's record in this run; it persists across ``answer`` calls (splits), so a server taken out
    stays out, and a paused one stays paused until its probe."""

    url: str
    answered: int = 0  # attempts it answered (any HTTP answer that is not a server fault)
    responded: bool = False  # it sent an HTTP response, or accepted a connection (so something listens there)
    failures_in_a_row: int = 0
    refused_in_a_row: int = 0  # of those, connections it refused (or an unknown host): not timeouts, not drops
    last_fault: str = ""
    out: bool = False  # taken out of rotation for the run
    paused_until: float | None = None  # the breaker is open until then (time.monotonic())
    paused_since: float | None = None  # when the current run of pauses began
    pauses: int = 0  # pauses since it last answered: each failed probe doubles the next one
    probing: bool = False  # its one probe request is in flight
    logprobs_refused: bool = False  # it refused a request for logprobs: it is not asked for them again
    logprobs_missing: bool = False  # it answered a request for logprobs without them (warned once)

    @property
    def paused(self) -> bool:
        return self.paused_until is not None

    @property
    def in_rotation(self) -> bool:
        """It takes new items and retries: neither taken out nor paused."""
        return not self.out and not self.paused

    @property
    def dead(self) -> bool:
        """Nothing has ever answered there and its last connections were refused: not worth a pause."""
        return not self.responded and self.refused_in_a_row >= DEAD_AFTER_REFUSED

    def probe_due(self, now: float) -> bool:
        """Its pause is over and no probe is in flight: the next attempt on it is the probe."""
        return self.paused_until is not None and not self.probing and now >= self.paused_until

    def answer(self) -> None:
        """Record an attempt it answered (a reply, or an error about the item itself)."""
        self.responded = True
        self.answered += 1
        self.failures_in_a_row = self.refused_in_a_row = 0

    def fail(self, fault: str, *, responded: bool, refused: bool = False) -> None:
        """Record a failed attempt: ``responded`` when something answered or accepted the connection, ``refused``
        when no connection could be made."""
        self.responded = self.responded or responded
        self.refused_in_a_row = self.refused_in_a_row + 1 if refused else 0
        self.failures_in_a_row += 1
        self.last_fault = fault

    def pause(self, now: float, pause_s: float, max_pause_s: float) -> float:
        """Open the breaker (again) for the next cool-down; returns its length in seconds."""
        self.pauses += 1
        seconds = cooldown(self.pauses, pause_s, max_pause_s)
        self.paused_until = now + seconds
        self.paused_since = self.paused_since if self.paused_since is not None else now
        return seconds

    def recover(self, now: float) -> float:
        """Close the breaker after an answer; returns how long the server was paused."""
        since = self.paused_since if self.paused_since is not None else now
        self.paused_until = self.paused_since = None
        self.pauses = 0
        self.probing = False
        return now - since
