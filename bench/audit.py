"""What the audit trail costs: the same requests on two servers over the same data, one writing
BALP AuditEvents (the default) and one with the benchmark-only `FHIR_AUDIT=false`, rounds
alternating between them in one run (the embedded default: FerretDB on PostgreSQL).

Dataset: bench/consent.py's (patients with open records, 5 DocumentReferences each, a professional
authorized by `--authorized` of them). Measured with the professional's token, 16 clients, closed
loop: read by id of a document, and `DocumentReference?patient=…&type=…&_sort=-date`.
Target (issue 10): audited throughput ≥ 80 % of the unaudited one for both.

    .venv/bin/python bench/audit.py [--patients 2000] [--authorized 500] [--rounds 4] [--seconds 6]

Only 127.0.0.1 is contacted; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import closed_loop, machine, use_uvloop  # noqa: E402
from consent import DOCS_PER_PATIENT, TYPES, _request, load, start_pair, summarize  # noqa: E402
from httpclient import Client  # noqa: E402

from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from tests.conftest import FERRETDB_BIN, stop_server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes `roots` and their descendants."""
    parent, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
    todo, seen = list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(c for c, pp in parent.items() if pp == pid)
    return sum(cpu.get(p, 0.0) for p in seen)


async def measure(ports: dict, token: str, authorized: int, rounds: int, seconds: float, clients: int,
                  pids: dict | None = None, engine_pids: list[int] | None = None) -> dict:
    conns = {m: [Client(p) for _ in range(clients)] for m, p in ports.items()}
    rng = random.Random(11)

    def op_for(kind: str, mode: str):
        port = ports[mode]

        async def op(ci: int, n: int) -> None:
            p = rng.randrange(authorized)
            if kind == "read":
                path = f"/fhir/DocumentReference/d{p}-{rng.randrange(DOCS_PER_PATIENT)}"
            else:
                path = f"/fhir/DocumentReference?patient=p{p}&type=http://loinc.org|{TYPES[p % 3]}&_sort=-date"
            status, _, body = await conns[mode][ci].send(_request(path, token, port))
            if status != 200 or (kind == "search" and b'"entry"' not in body):
                raise RuntimeError(f"{status} {body[:200]!r}")
        return op

    out: dict = {}
    for kind in ("read", "search"):
        for mode in ports:  # warm-up
            await closed_loop(clients, op_for(kind, mode), duration=2, max_requests=10**6, record=False)
        per: dict = {m: [] for m in ports}
        for r in range(rounds):
            for mode in (list(ports) if r % 2 == 0 else list(reversed(ports))):
                before = (tree_cpu(pids[mode]), tree_cpu(engine_pids)) if pids and engine_pids else None
                cell = await closed_loop(clients, op_for(kind, mode), duration=seconds, max_requests=10**7)
                summary = cell.summary()
                if before is not None and cell.requests:  # CPU per request: the server's, the engine's
                    summary["server_cpu_ms"] = (tree_cpu(pids[mode]) - before[0]) * 1000 / cell.requests
                    summary["engine_cpu_ms"] = (tree_cpu(engine_pids) - before[1]) * 1000 / cell.requests
                per[mode].append(summary)
        out[kind] = {mode: summarize(cells) for mode, cells in per.items()}
        base = out[kind]["unaudited"]["throughput_median"]
        out[kind]["ratio"] = round(out[kind]["audited"]["throughput_median"] / base, 3) if base else None
    for cs in conns.values():
        for c in cs:
            c.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--authorized", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    loop_kind = use_uvloop()
    work = Path(tempfile.mkdtemp(prefix="wt-audit-bench-"))
    engine = EmbeddedEngine(FERRETDB_BIN, work, backend="postgresql")
    uri = engine.start()
    database = "audit_bench"
    servers = {}
    try:
        loaded = load(uri, database, args.patients, args.authorized)
        servers, token = start_pair(uri, database, "audited", "unaudited", {"FHIR_AUDIT": "false"}, "user/*.rs")
        ports = {m: int(s.base.rsplit(":", 1)[1]) for m, s in servers.items()}
        pids = {m: [s.process.pid] for m, s in servers.items()}
        engine_pids = [engine.ferret.process.pid] if engine.ferret and engine.ferret.process else []
        pidfile = work / "postgresql" / "pgdata" / "postmaster.pid"
        if pidfile.exists():
            engine_pids.append(int(pidfile.read_text().split()[0]))
        result = asyncio.run(measure(ports, token, args.authorized, args.rounds, args.seconds, args.clients,
                                     pids, engine_pids))
        with MongoClient(uri) as c:
            result["audit_events_written"] = c[database]["AuditEvent"].count_documents({})
    finally:
        for s in servers.values():
            stop_server(s)
        engine.stop()
    result["dataset"] = loaded
    result["machine"] = machine(loop=loop_kind, clients=args.clients, rounds=args.rounds,
                                seconds_per_cell=args.seconds)
    print(json.dumps(result, indent=2))
    print("\n| request | audited (req/s) | unaudited (req/s) | ratio | target | CPU ms/request audited: server, engine "
          "| unaudited: server, engine |\n|---|---|---|---|---|---|---|")
    for kind in ("read", "search"):
        r = result[kind]
        a, u = r["audited"], r["unaudited"]
        print(f"| {kind} | {a['throughput_median']} | {u['throughput_median']} | {r['ratio']} | ≥ 0.8 | "
              f"{a.get('server_cpu_ms')}, {a.get('engine_cpu_ms')} | {u.get('server_cpu_ms')}, {u.get('engine_cpu_ms')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
