"""What one hostile request of each kind of `bench/hostile.py` costs, one at a time: CPU of the
server process (its event loop and threads), of its worker processes, of the engine, and the
client-observed time, per request. One server, one engine, loopback only; the throttles are lifted so
that every secret guess is checked. For /health and read-by-id, the same, as a yardstick.

Compare two commits by running this file from each (docs/benchmarks.md, "Sixth pass").

    .venv/bin/python bench/hostile_cost.py [--requests 20] [--kinds bundle,big,deep,secret,search]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import CLK_TCK, machine, process_tree  # noqa: E402
from bench.hostile import FHIR, KINDS, MAX_RESOURCE, _bodies, tokens  # noqa: E402
from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _switches(pid: int) -> int:
    """Context switches of all the threads of `pid` so far: each is a thread put to sleep or
    taken off its CPU (a thread woken to take the GIL, read a pipe...)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            continue
    return total


def _snapshot(server_pid: int, engine_pid: int) -> dict[str, float]:
    workers = [p for p in process_tree(server_pid) if p != server_pid]
    return {"server": _cpu(server_pid), "workers": sum(_cpu(p) for p in workers), "engine": _cpu(engine_pid),
            "client": time.process_time()}


def run(requests: int, kinds: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hostile-cost-"))
    engine = EmbeddedFerretDB(FERRETDB_BIN, work / "ferretdb")
    uri = engine.start()
    server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_MAX_BODY_BYTES": str(32 * 1024 * 1024),
                                "FHIR_MAX_RESOURCE_BYTES": str(MAX_RESOURCE), "FHIR_ADDRESS_MAX_ATTEMPTS": "100000",
                                "FHIR_CLIENT_MAX_FAILURES": "100000"})
    out: dict = {"requests_per_kind": requests, "per_request_ms": {}}
    try:
        token, ro_token = tokens(server)
        bodies = _bodies()
        with httpx.Client(timeout=300) as c:
            pid = c.post(server.fhir_base + "/Patient", json={"resourceType": "Patient", "name": [{"family": "Dupont"}]},
                         headers={**FHIR, "Authorization": f"Bearer {token}"}).json()["id"]

            def send(kind: str, i: int) -> int:
                ro_auth = {"Authorization": f"Bearer {ro_token}"}
                rw_auth = {"Authorization": f"Bearer {token}"}
                if kind == "bundle":
                    r = c.post(server.fhir_base, content=bodies["bundle"], headers={**FHIR, **ro_auth})
                elif kind in ("big", "deep"):
                    r = c.post(server.fhir_base + "/Patient", content=bodies[kind], headers={**FHIR, **rw_auth})
                elif kind == "secret":
                    r = c.post(server.base + "/auth/token", auth=(f"guess-{i}", "wrong"),
                               data={"grant_type": "client_credentials"})
                elif kind == "search":
                    r = c.get(server.fhir_base + "/Patient", headers=ro_auth,
                              params=[("_revinclude", "DocumentReference:subject")] * 500)
                elif kind == "health":
                    r = c.get(server.base + "/health")
                else:
                    r = c.get(f"{server.fhir_base}/Patient/{pid}", headers=rw_auth)
                return r.status_code

            for i in range(3):  # the worker processes are started (and their start-up CPU spent) before measuring
                send("big", -100 - i)
            for kind in [*kinds, "health", "read"]:
                for i in range(3):  # warm-up: the kind's first use
                    send(kind, -1 - i)
                switches = _switches(server.process.pid)
                before, started = _snapshot(server.process.pid, engine.process.pid), time.perf_counter()
                statuses = sorted({send(kind, i) for i in range(requests)})
                wall = time.perf_counter() - started
                after = _snapshot(server.process.pid, engine.process.pid)
                out["per_request_ms"][kind] = {"statuses": statuses, "wall": round(1e3 * wall / requests, 2),
                                               **{k: round(1e3 * (after[k] - before[k]) / requests, 2) for k in after},
                                               "server_switches": round((_switches(server.process.pid) - switches) / requests)}
        out["machine"] = machine()
        return out
    finally:
        stop_server(server)
        engine.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="requests of each kind, one after the other")
    ap.add_argument("--kinds", default=",".join(KINDS), help="kinds of hostile request, comma-separated")
    args = ap.parse_args()
    result = run(args.requests, args.kinds.split(","))
    print(json.dumps(result, indent=2))
    print("\n| kind | statuses | wall | server CPU | server context switches | workers CPU | engine CPU | client CPU |\n"
          "|---|---|---|---|---|---|---|---|")
    for kind, r in result["per_request_ms"].items():
        print(f"| {kind} | {r['statuses']} | {r['wall']} ms | {r['server']} ms | {r['server_switches']} | "
              f"{r['workers']} ms | {r['engine']} ms | {r['client']} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
