"""CPU-heavy work off the event loop, on a small bounded thread pool (docs/decisions.md, "Hardening").

Parsing and validating a large body, extracting index fields from a large resource and argon2
hashing would otherwise run on the event loop and stall every other request of the worker
(`/health` waited seconds behind one 20 MB Bundle). They run here instead: at most `threads` at a
time (an anyio CapacityLimiter), and when `max_waiting` calls already wait for a thread the next
one is refused with `Overloaded` (the callers answer 503) rather than queueing without bound.

Threads rather than processes: argon2 releases the GIL, and pure-Python or Rust work that keeps
it is still preempted every `sys.getswitchinterval()` (5 ms), so the loop keeps serving; a process
pool would pickle multi-megabyte resources both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

# below this many bytes of input the thread hop costs more than the work it moves
INLINE_BYTES = 64 * 1024


class Overloaded(Exception):
    """Too many CPU-heavy calls are already waiting for a thread."""


class _Pool:
    def __init__(self) -> None:
        self.threads = 2
        self.max_waiting = 64
        self._limiter: anyio.CapacityLimiter | None = None
        self._hashing: anyio.CapacityLimiter | None = None

    def configure(self, threads: int, max_waiting: int) -> None:
        self.threads, self.max_waiting = threads, max_waiting
        self._limiter = None  # made again, in the running event loop, on first use
        self._hashing = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter

    @property
    def hashing(self) -> anyio.CapacityLimiter:
        """argon2 uses several cores and 64 MiB per call: one at a time per worker."""
        if self._hashing is None:
            self._hashing = anyio.CapacityLimiter(1)
        return self._hashing


POOL = _Pool()


def configure(threads: int, max_waiting: int) -> None:
    POOL.configure(threads, max_waiting)


async def run(fn: Callable[..., T], *args, hashing: bool = False) -> T:
    """`fn(*args)` on the CPU pool (`hashing`: the one-at-a-time lane for argon2); raises
    Overloaded when too many calls wait already."""
    limiter = POOL.hashing if hashing else POOL.limiter
    if limiter.borrowed_tokens >= limiter.total_tokens and limiter.statistics().tasks_waiting >= POOL.max_waiting:
        raise Overloaded
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)


async def run_if_large(size: int, fn: Callable[..., T], *args) -> T:
    """`fn(*args)` inline when its input is small (`size` bytes), else on the CPU pool."""
    if size < INLINE_BYTES:
        return fn(*args)
    return await run(fn, *args)
