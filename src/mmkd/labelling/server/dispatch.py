"""One ``answer`` call of the server backend: items from one stream are dispatched over the servers, with retries
in one budget per item, a circuit breaker per server (``mmkd.labelling.server.circuit``) and a wall-clock window
after which the run gives up.

``max_concurrency`` workers per server pull items. A failed attempt is retried at once on another server in
rotation when there is one, else on the same server after a backoff; each item spends at most ``max_retries + 1``
attempts in all. A paused server's waiting items go to the servers in rotation at once; when none is, they wait
for its probe (the last server standing is never given up while items have attempts left). The run gives up when
no server has answered for ``give_up_after_s`` since the first failure: the waiting items become errors that say
so, and the items not taken are not sent (``BackendStopped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmkd.inference.base import BackendStopped, InferenceReply, InferenceRequest, ReplyCallback
from mmkd.labelling.server.circuit import ServerHealth
from mmkd.labelling.server.faults import ConfigError, backoff

if TYPE_CHECKING:
    from mmkd.labelling.openai_compat import OpenAICompatBackend

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One item on its way through the servers: the attempts it has spent and the last fault it met."""

    request: InferenceRequest
    position: int  # in the request order
    attempts: int = 0
    servers: list[str] = field(default_factory=list)  # where each attempt went, in order
    fault: str = ""  # the last failed attempt, described
    retry_after: float | None = None  # what the server that failed asked for (Retry-After)


class Dispatch:
    """The workers, retry queues and breaker transitions of one ``answer`` call (see the module docstring)."""

    def __init__(
        self, backend: OpenAICompatBackend, source: Iterator[InferenceRequest], on_reply: ReplyCallback | None
    ):
        self.backend, self.config, self.source, self.on_reply = backend, backend.config, source, on_reply
        self.servers = [h for h in backend.health.values() if not h.out]
        self.clients = {h.url: backend.client(h.url) for h in self.servers}
        self.retries: dict[str, list[tuple[float, int, Job]]] = {h.url: [] for h in self.servers}  # heaps by due
        self.replies: dict[int, InferenceReply] = {}
        self.taken = 0  # requests taken from the source
        self.exhausted = False
        self.fatal: BaseException | None = None
        self.gave_up: str | None = None  # why the run gave up (the window passed)
        self.failing_since: float | None = None  # the first failed attempt since the last answer
        self.last_fault = ""  # the last failed attempt anywhere, with its server
        self.wake = asyncio.Event()
        self.order = itertools.count()

    async def run(self) -> list[InferenceReply]:
        """Answer every request of the source, in order; raise ``BackendStopped`` when the run cannot go on."""
        try:
            workers = [self.worker(h) for h in self.servers for _ in range(self.config.max_concurrency)]
            await asyncio.gather(*workers)
        finally:
            for client in self.clients.values():
                await client.close()
            self.backend.usage.retries = self.backend.usage.requests - self.backend.items_sent
        if self.fatal is not None:
            raise self.fatal
        complete = self.exhausted and len(self.replies) == self.taken
        if self.gave_up is not None:
            self.backend.stopped = self.gave_up  # later calls (splits) send nothing either
            if not complete:
                raise BackendStopped(self.gave_up)
        elif not complete:
            self.backend.stopped = self.backend.stop_reason()
            log.error("%s", self.backend.stopped)
            raise BackendStopped(self.backend.stopped)
        return [self.replies[i] for i in range(self.taken)]

    async def worker(self, server: ServerHealth) -> None:
        client = self.clients[server.url]
        while not server.out and self.fatal is None and self.gave_up is None:
            now = time.monotonic()
            if self.failing_since is not None and now - self.failing_since >= self.config.give_up_after_s:
                self.give_up()
                return
            job, wait, probe = self.take(server, now)
            if job is None:
                if self.exhausted and len(self.replies) == self.taken:
                    return
                await self.sleep(wait, now)
                continue
            if probe:
                server.probing = True
                log.info("teacher %r: probing %s with one request", self.backend.name, server.url)
            try:
                reply = await self.backend.attempt(client, server, job)
            except ConfigError as exc:  # this server refuses the key, model or URL: the others may not
                server.probing = False
                if not [h for h in self.servers if not h.out and h is not server]:
                    self.fatal = exc
                    self.changed()
                    return
                server.last_fault = job.fault = str(exc)
                self.take_out(server, f"because it refused the request: {exc}")
                self.route_retry(server, job)
                continue
            now = time.monotonic()
            if reply is not None:  # answered (an error about the item itself included)
                self.failing_since = None
                if probe and not server.out:  # only the probe closes the breaker: earlier requests prove less
                    self.recover(server, now)
            else:
                self.failing_since = now if self.failing_since is None else self.failing_since
                self.last_fault = f"{server.url}: {job.fault}"
                if probe:
                    server.probing = False
                    if not server.out:
                        self.pause(server, now, f"failed its probe ({job.fault})")
            if reply is not None:
                self.reply(job, reply)
            else:
                self.route_retry(server, job)

    def take(self, server: ServerHealth, now: float) -> tuple[Job | None, float | None, bool]:
        """The next job for ``server`` and whether it is the probe of a paused server; without a job, how long until
        one may be due (None: until something changes). In rotation: a retry that is due, else a new item. Paused:
        nothing until the pause is over, then one probe: the due retry with the most attempts left (a server
        that fails first attempts only is judged on a retry), else a new item."""
        heap = self.retries[server.url]
        if server.paused:
            if not server.probe_due(now):
                return None, None if server.probing else server.paused_until - now, False
            due = [entry for entry in heap if entry[0] <= now]
            if due:
                entry = min(due, key=lambda e: (e[2].attempts, e[0], e[1]))
                heap.remove(entry)
                heapq.heapify(heap)
                return entry[2], None, True
            job = self.new_job()
            return (job, None, True) if job is not None else (None, heap[0][0] - now if heap else None, False)
        if heap and heap[0][0] <= now:
            return heapq.heappop(heap)[2], None, False
        job = self.new_job()
        return (job, None, False) if job is not None else (None, heap[0][0] - now if heap else None, False)

    def new_job(self) -> Job | None:
        """The next request of the source as a job, or None when the source is exhausted."""
        if self.exhausted:
            return None
        try:
            request = next(self.source)
        except StopIteration:
            self.exhausted = True
            self.changed()
            return None
        self.taken += 1
        return Job(request, self.taken - 1)

    async def sleep(self, wait: float | None, now: float) -> None:
        """Wait until something changes, ``wait`` seconds pass, or the give-up window ends."""
        if self.failing_since is not None:
            left = self.failing_since + self.config.give_up_after_s - now
            wait = left if wait is None else min(wait, left)
        event = self.wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(wait, 0.0) if wait is not None else None)

    def changed(self) -> None:
        """Wake every idle worker (each waits on the event it saw; later waiters get a fresh one)."""
        self.wake.set()
        self.wake = asyncio.Event()

    def reply(self, job: Job, reply: InferenceReply) -> None:
        self.replies[job.position] = reply
        self.changed()
        if self.on_reply is not None:
            self.on_reply(reply)

    def route_retry(self, server: ServerHealth, job: Job) -> None:
        """After a failed attempt: take the server out if nothing listens there, or pause it if it keeps failing;
        then retry the item (at once on another server in rotation when there is one, else on this one after a
        backoff, or after its probe when it is paused), or record it as failed."""
        now = time.monotonic()
        if not server.out and server.dead:
            self.take_out(server)
        elif server.in_rotation and server.failures_in_a_row >= self.config.pause_server_after:
            self.pause(server, now, f"after {server.failures_in_a_row} failed attempts in a row (last: {job.fault})")
        if self.gave_up is not None:
            return self.reply(job, self.backend.failed(job, self.gave_up_why()))
        if job.attempts >= self.config.max_retries + 1:
            return self.reply(job, self.backend.failed(job))
        others = [h for h in self.servers if h is not server and h.in_rotation]
        if others:  # the wait (backoff, Retry-After) concerns the server that failed, not the others
            target, due = min(others, key=lambda h: (h.url in job.servers, len(self.retries[h.url]))), now
        else:
            alive = [h for h in self.servers if not h.out]  # the same server, else one that waits for its probe
            if not alive:
                return self.reply(job, self.backend.failed(job, "every server is out of rotation"))
            target = server if not server.out else min(alive, key=lambda h: h.paused_until or now)
            due = now + backoff(job.attempts, job.retry_after)
        heapq.heappush(self.retries[target.url], (due, next(self.order), job))
        self.changed()

    def move_waiting(self, server: ServerHealth, to: list[ServerHealth], now: float) -> None:
        """Give the retries waiting for ``server`` to the servers ``to`` (due at once), the least loaded first."""
        waiting, self.retries[server.url] = self.retries[server.url], []
        for _, _, job in waiting:
            target = min(to, key=lambda h: len(self.retries[h.url]))
            heapq.heappush(self.retries[target.url], (now, next(self.order), job))

    def pause(self, server: ServerHealth, now: float, why: str) -> None:
        """Open ``server``'s breaker (again), with one warning; its waiting items go to the servers in rotation."""
        first = not server.paused
        seconds = server.pause(now, self.config.pause_s, self.config.max_pause_s)
        rotation = [h for h in self.servers if h.in_rotation]
        if first:
            log.warning(
                "teacher %r: %s is paused for %.3g s %s, then gets one probe request; %s",
                self.backend.name,
                server.url,
                seconds,
                why,
                f"{len(rotation)} other server(s) take its items"
                if rotation
                else "its items wait for it (the run gives up after "
                f"{self.config.give_up_after_s:g} s without an answer: give_up_after_s)",
            )
        else:
            log.warning("teacher %r: %s %s; paused again for %.3g s", self.backend.name, server.url, why, seconds)
        if rotation:
            self.move_waiting(server, rotation, now)
        self.changed()

    def recover(self, server: ServerHealth, now: float) -> None:
        """Close ``server``'s breaker after an answer, with one line; the items waiting for paused servers come to
        it."""
        paused_for = server.recover(now)
        log.info(
            "teacher %r: %s answered; back in rotation after %.3g s paused", self.backend.name, server.url, paused_for
        )
        for other in self.servers:
            if other is not server and not other.in_rotation and self.retries[other.url]:
                self.move_waiting(other, [server], now)
        self.changed()

    def take_out(self, server: ServerHealth, why: str | None = None) -> None:
        """Take ``server`` out of rotation for the run (once), with a warning; its waiting retries go elsewhere."""
        if server.out:
            return
        server.out, server.probing = True, False
        why = why or f"after {server.refused_in_a_row} refused connections and no response ever ({server.last_fault})"
        left = [h for h in self.servers if not h.out]
        log.warning(
            "teacher %r: %s is taken out of rotation for this run %s; %d server(s) left",
            self.backend.name,
            server.url,
            why,
            len(left),
        )
        to = [h for h in left if h.in_rotation] or left
        if to:
            self.move_waiting(server, to, time.monotonic())
        else:
            for _, _, job in self.retries.pop(server.url):
                self.reply(job, self.backend.failed(job, "every server is out of rotation"))
            self.retries[server.url] = []
        self.changed()

    def gave_up_why(self) -> str:
        return f"no server answered for {self.config.give_up_after_s:g} s (give_up_after_s)"

    def give_up(self) -> None:
        """Stop the run: no server answered within the window. Waiting items become errors that say so."""
        window = self.config.give_up_after_s
        self.gave_up = (
            f"teacher {self.backend.name!r}: no server answered successfully for {window:g} s (give_up_after_s: "
            f"{window:g}); last error: {self.last_fault}. The items not sent are recorded as errors; re-run when the "
            "server is up (answers so far are cached), or raise give_up_after_s to wait longer"
        )
        log.error("%s", self.gave_up)
        for url, heap in self.retries.items():
            self.retries[url] = []
            for _, _, job in heap:
                self.reply(job, self.backend.failed(job, self.gave_up_why()))
        self.changed()
