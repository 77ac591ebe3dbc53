"""Pieces shared by the benchmark's orchestrator (crud.py) and its baseline process (baseline.py):
the closed-loop runner, latency statistics and per-process CPU accounting from /proc.

Closed loop: N clients, each with one request in flight; a client starts a new request as soon as
its previous one has answered. Only requests *started* inside the measuring window count, and every
one of them is waited for (bounded by `max_tail`), so operations slower than the window (FerretDB
writes on a few thousand documents take seconds) are still measured instead of being dropped, as
`wrk -d` would drop them.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- CPU accounting ------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(root: int | None) -> float:
    """CPU seconds (user + system) used so far by `root` and its live descendants."""
    if root is None:
        return 0.0
    total = 0.0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is not None:
            total += st[1]
    return total


def system_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) / CLK_TCK for x in parts[:8]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


class CpuMeter:
    """CPU used by named process trees (and by this process) between start() and stop()."""

    def __init__(self, trees: dict[str, int | None]) -> None:
        self.trees = trees
        self._start: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out = {name: tree_cpu(pid) for name, pid in self.trees.items()}
        out["self"] = time.process_time()
        busy, total = system_busy()
        out["_busy"], out["_total"] = busy, total
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        d = {k: end[k] - self._start[k] for k in end}
        total, busy = d.pop("_total"), d.pop("_busy")
        ours = sum(d.values())
        # busy CPU not accounted to any measured process: other sessions, kernel threads, ...
        d["unaccounted"] = max(0.0, busy - ours)
        d["system_busy_pct"] = 100.0 * busy / total if total else 0.0
        return d


# ---- statistics ----------------------------------------------------------------------------------

def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


@dataclass
class CellResult:
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput": round(self.requests / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0,
            "p50_ms": round(percentile(lat, 50), 2),
            "p90_ms": round(percentile(lat, 90), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(lat[-1], 2) if lat else float("nan"),
            "mean_ms": round(sum(lat) / len(lat), 2) if lat else float("nan"),
            "error_samples": self.error_samples[:3],
        }


# ---- the closed loop -----------------------------------------------------------------------------

Op = Callable[[int, int], Awaitable[None]]  # (client index, request number of that client) -> None


async def closed_loop(clients: int, op: Op, *, duration: float, max_requests: int, max_tail: float = 120.0,
                      record: bool = True) -> CellResult:
    """Run `op` from `clients` concurrent clients; count requests started within `duration` seconds
    (at most `max_requests` in all) and wait for all of them to finish (at most `max_tail` more seconds).
    An op raising counts as an error (its latency is not recorded)."""
    res = CellResult()
    started = [0]
    t0 = time.perf_counter()
    deadline = t0 + duration
    last_end = [t0]

    async def client(ci: int) -> None:
        n = 0
        while started[0] < max_requests and time.perf_counter() < deadline:
            started[0] += 1
            s = time.perf_counter()
            try:
                await op(ci, n)
            except Exception as exc:  # noqa: BLE001 - a benchmark reports errors, it does not stop
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            else:
                e = time.perf_counter()
                if record:
                    res.latencies_ms.append((e - s) * 1000.0)
                res.requests += 1
            last_end[0] = time.perf_counter()
            n += 1

    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=duration + max_tail)
    for t in pending:
        t.cancel()
    if pending:
        res.error_samples.append(f"{len(pending)} clients still waiting after the {max_tail}s tail; cancelled")
        res.errors += len(pending)
    res.elapsed_s = last_end[0] - t0
    return res


def use_uvloop() -> str:
    """uvicorn serves on uvloop (uvicorn[standard]); the baselines and the load client use it too."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def machine(**extra) -> dict:
    """What a result must say about the machine it was measured on (docs/benchmarks.md), and the
    run's own settings in `extra`."""
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {"python": platform.python_version(), "cpus": os.cpu_count(), **extra, "loadavg": loadavg}
