"""CPU-heavy work off the event loop (docs/decisions.md, "Hardening"): large request bodies in
worker processes, argon2 and index extraction on low-priority threads.

Parsing and validating a large body would otherwise run on the event loop and stall every other
request of the worker (`/health` waited seconds behind one 20 MB Bundle). Threads were not enough:
orjson, pydantic-core and the regex engine hold the GIL for tens of milliseconds per call, and while
a thread holds it, every time the event loop thread waits for the database it must then wait up to
the switch interval (5 ms) to get the GIL back — a read doing six round trips took 30 ms instead of
2 (bench/hostile.py). So bodies above INLINE_BYTES are parsed and validated by `run_if_large` in a
process pool: the loop holds the GIL only to hand the bytes over and take the verdict back.

- Processes (`run_if_large`): `processes` workers, started by `warm` when the app starts, from a
  fork server that has the validation modules imported, at a lower CPU priority (`nice`) so that
  under load the loop and the database get the cores first. A worker that dies (out of memory on a hostile body) breaks the
  pool: the request gets a 503 and the next one a new pool.
- Threads (`run`): for work that releases the GIL (argon2: `hashing=True`, one at a time, it uses
  several cores and 64 MiB) or cannot be pickled (the repository's index extraction of a large
  valid resource). Their threads also run at the lower priority (Linux schedules threads as tasks).

Every lane is bounded: when `max_waiting` calls already wait, the next one is refused with
`Overloaded` (the callers answer 503) rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio

T = TypeVar("T")

# below this many bytes of input the hop to another process costs more than the work it moves
INLINE_BYTES = 64 * 1024



class Overloaded(Exception):
    """Too many CPU-heavy calls are already waiting for a worker."""


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (a worker process's: its one thread runs
    the calls), and put it under SCHED_BATCH (sched(7)); best effort.

    The event loop wakes these threads when it hands them work, and on Linux a woken thread may
    take the CPU from the one that woke it (wake-up preemption), whatever its nice value: the loop
    then waited for the work it had just handed over. A SCHED_BATCH thread keeps its share of the
    CPU but waits for the running thread's slice instead. Under the hostile flood, switching these
    threads between the two policies round by round in one run: read p99 38–39 → 30–33 ms, /health
    p99 1–2 ms lower (`bench/hostile.py --alternate-policy workers`; docs/benchmarks.md, "Sixth pass")."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()  # on Linux a thread id is a valid PRIO_PROCESS target
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):  # whatever `nice` is
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # keeps the nice value


class _Lane:
    """One bounded executor, made on first use in the running process."""

    def __init__(self, make: Callable[[], Executor], slots: int, max_waiting: int) -> None:
        self._make, self.slots, self.max_waiting = make, slots, max_waiting
        self._executor: Executor | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.slots)
        return self._limiter

    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._make()
        return self._executor

    async def run(self, fn: Callable[..., T], *args) -> T:
        limiter = self.limiter
        if limiter.borrowed_tokens >= limiter.total_tokens and limiter.statistics().tasks_waiting >= self.max_waiting:
            raise Overloaded
        async with limiter:
            executor = self.executor()
            try:
                return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            except BrokenProcessPool:  # a worker died (killed, out of memory): a new pool for the next call
                if self._executor is executor:
                    self._executor = None
                    executor.shutdown(wait=False, cancel_futures=True)
                raise Overloaded from None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._limiter = None


class _Pool:
    def __init__(self) -> None:
        self.configure(threads=2, max_waiting=32, processes=1, nice=10, preload=())

    def configure(self, threads: int, max_waiting: int, processes: int, nice: int, preload: Sequence[str]) -> None:
        self.nice, self.preload = nice, list(preload)
        self.threads = _Lane(lambda: ThreadPoolExecutor(threads, "cpu", _lower_priority, (nice,)), threads,
                             max_waiting)
        self.hashing = _Lane(lambda: ThreadPoolExecutor(1, "argon2", _lower_priority, (nice,)), 1, max_waiting)
        self.processes = _Lane(self._process_pool, processes, max_waiting)
        self.process_count = processes

    def _process_pool(self) -> Executor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fhir_server.fhir.validation", *self.preload])
        return ProcessPoolExecutor(self.process_count, mp_context=context, initializer=_lower_priority,
                                   initargs=(self.nice,))

    def shutdown(self) -> None:
        for lane in (self.threads, self.hashing, self.processes):
            lane.shutdown()


POOL = _Pool()


def configure(threads: int, max_waiting: int, processes: int = 1, nice: int = 10,
              preload: Sequence[str] = ()) -> None:
    """`preload`: modules the fork server imports once (those whose functions the workers run),
    so that each worker starts with them."""
    POOL.shutdown()
    POOL.configure(threads, max_waiting, processes, nice, preload)


def shutdown() -> None:
    """Stop the workers (at application shutdown)."""
    POOL.shutdown()


def _ready() -> bool:
    return True


async def warm() -> None:
    """Start the fork server and the worker processes now, from a thread. A process pool starts
    its processes when a call is submitted, and the first start also starts the fork server, which
    imports the validation modules: submitted from the event loop, the first large body of a
    worker's life held the loop for 0.6 s (bench/hostile.py)."""
    lane = POOL.processes
    executor = lane.executor()
    await asyncio.to_thread(lambda: executor.submit(_ready).result())


async def run(fn: Callable[..., T], *args, hashing: bool = False) -> T:
    """`fn(*args)` on a low-priority thread (`hashing`: the one-at-a-time lane for argon2); raises
    Overloaded when too many calls wait already. For work that releases the GIL or cannot be
    pickled; parsing and validating belong in `run_if_large`."""
    return await (POOL.hashing if hashing else POOL.threads).run(fn, *args)


def _spool_dir() -> str:
    """Where bodies wait for a worker: memory-backed when the system has it."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` into `fd` (the GIL released while the kernel copies), then `fd` closed."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_spool(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="fhir-body-", dir=_spool_dir())
    _write_all(fd, data)
    return path


@dataclass
class WithBlob:
    """A result with a large `bytes` part (`blob`), which comes back from a worker process through
    its private file, like the body went, instead of through the result pipe: the pipe carried it
    64 KiB at a time, each piece waking the pool's result thread, which took the GIL to append it,
    then unpickled the whole holding the GIL (a 20 MB Bundle's resources: ~300 wake-ups and ~5 ms
    of GIL; bench/hostile_cost.py)."""

    value: Any
    blob: bytes


def _read_spool(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remove_spool(done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is None:
        with contextlib.suppress(OSError):
            os.unlink(done.result())


@dataclass
class _BlobInFile:
    """What the pipe carries of a `WithBlob` result: the blob itself is in the body's file."""

    value: Any
    size: int


def _with_spooled(path: str, fn: Callable[..., T], args: tuple) -> T | _BlobInFile:
    result = fn(_read_spool(path), *args)
    if isinstance(result, WithBlob):
        # the body has been read: its file carries the blob back. Never created anew: if the request
        # was given up meanwhile, the server has removed the file, and a new one would stay in
        # /dev/shm (memory) for good, 20 MB per request a client gives up on purpose
        _write_all(os.open(path, os.O_WRONLY | os.O_TRUNC), result.blob)
        return _BlobInFile(result.value, len(result.blob))
    return result


async def run_with_bytes(data: bytes, fn: Callable[..., T], *args) -> T:
    """`fn(data, *args)` in a worker process. The bytes go through a private file (written with the
    GIL released) rather than through pickle, which copies them holding the GIL (9 ms for 20 MB);
    so does the blob of a `WithBlob` result, read back on a thread."""
    writing = asyncio.ensure_future(run(_write_spool, data))
    try:
        path = await asyncio.shield(writing)
    except asyncio.CancelledError:  # the thread still makes the file: remove it once it is made
        writing.add_done_callback(_remove_spool)
        raise
    try:
        result = await POOL.processes.run(_with_spooled, path, fn, args)
        if isinstance(result, _BlobInFile):
            blob = await run(_read_spool, path)
            if len(blob) != result.size:
                raise Overloaded  # the file is not what the worker wrote: as if the worker had failed
            return cast(T, WithBlob(result.value, blob))
        return result
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def run_if_large(size: int, fn: Callable[..., T], *args) -> T:
    """`fn(*args)` inline when its input is small (`size` bytes), else in a worker process: `fn`
    must be a module-level function and its arguments and result picklable (a FhirError it raises
    reaches the caller as itself)."""
    if size < INLINE_BYTES:
        return fn(*args)
    return await POOL.processes.run(fn, *args)
