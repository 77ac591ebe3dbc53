"""Who may take the CPU from the event loop (issue 12; fhir/offload.py, `_lower_priority`).

On Linux a thread woken by another may take its CPU (wake-up preemption). The event loop wakes the
worker processes and the low-priority threads at every piece of CPU-heavy work it hands them; they
must wait for the loop's slice instead (SCHED_BATCH, on top of their lower nice value), while the
loop itself stays an ordinary thread at the ordinary priority, which preempts them when a request
wakes it. Read from /proc, getpriority(2) and sched_getscheduler(2), on a running server."""

from __future__ import annotations

import os
import sys

import httpx
import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux scheduling policies")


def _tasks(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            children.setdefault(int(data[data.rindex(b")") + 2:].split()[1]), []).append(int(name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def _policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(tid) for tid in _tasks(pid)}


def test_the_event_loop_stays_ordinary_and_the_heavy_work_yields_to_it(server):
    with httpx.Client(base_url=server.fhir_base, timeout=60) as c:
        # a body over the inline size goes to a worker process, which therefore exists now
        r = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "W" * 70_000}]},
                   headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text
        # a body over 1 MiB is joined on the low-priority thread lane, which therefore exists now
        r = c.post("/Binary", content=os.urandom(1024 * 1024 + 4096), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    main = server.process.pid
    assert os.sched_getscheduler(main) == os.SCHED_OTHER  # the event loop's thread (the main thread's id is the pid)
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the server inherits this process's nice value
    low = min(19, base + 10)  # FHIR_CPU_NICE's default
    workers = [pid for pid in _descendants(main) if "multiprocessing.forkserver" in _cmdline(pid)
               and os.getpriority(os.PRIO_PROCESS, pid) > base]
    assert workers, "no worker process found under the server"
    for pid in workers:
        assert _policies(pid) == {os.SCHED_BATCH}, _cmdline(pid)
        assert os.getpriority(os.PRIO_PROCESS, pid) == low
    threads = {tid: (os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)) for tid in _tasks(main)}
    assert threads[main] == (os.SCHED_OTHER, base)
    lane = [tid for tid, (policy, nice) in threads.items() if nice == low and tid != main]
    assert lane, "no low-priority thread in the server"
    assert all(threads[tid][0] == os.SCHED_BATCH for tid in lane)
