"""What recording a Provenance with each write costs: creates on two servers over the same data, one
recording Provenance (the default) and one with the benchmark-only `FHIR_PROVENANCE=false`, rounds
alternating between them in one run (the embedded default: FerretDB on PostgreSQL). Both servers
audit as usual, so the difference is the Provenance alone.

Dataset: bench/consent.py's (patients with open records, 5 DocumentReferences each, a professional
authorized by `--authorized` of them). Measured with the professional's token (consent enforced),
16 clients, closed loop: `POST DocumentReference` (prefer return=minimal) for a random authorized
patient. Target (issue 10): throughput with Provenance ≥ 70 % of the one without.

    .venv/bin/python bench/provenance.py [--patients 2000] [--authorized 500] [--rounds 4] [--seconds 6]

Only 127.0.0.1 is contacted; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path

import orjson
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import closed_loop, machine, use_uvloop  # noqa: E402
from consent import DR, TYPES, load, start_pair, summarize  # noqa: E402
from httpclient import Client  # noqa: E402

from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from tests.conftest import FERRETDB_BIN, stop_server  # noqa: E402
from tests.dmp import document  # noqa: E402

MODES = ("provenance", "no-provenance")


def _create(token: str, port: int, patient: str, code: str) -> bytes:
    body = orjson.dumps(document(patient, code=code, author=DR, date="2026-06-01T10:00:00Z"))
    return (f"POST /fhir/DocumentReference HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/fhir+json\r\n"
            f"Content-Type: application/fhir+json\r\nPrefer: return=minimal\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def measure(ports: dict, token: str, authorized: int, rounds: int, seconds: float, clients: int) -> dict:
    conns = {m: [Client(p) for _ in range(clients)] for m, p in ports.items()}
    rng = random.Random(13)

    def op_for(mode: str):
        port = ports[mode]

        async def op(ci: int, n: int) -> None:
            p = rng.randrange(authorized)
            status, _, body = await conns[mode][ci].send(_create(token, port, f"p{p}", TYPES[p % 3]))
            if status != 201:
                raise RuntimeError(f"{status} {body[:200]!r}")
        return op

    for mode in ports:  # warm-up
        await closed_loop(clients, op_for(mode), duration=2, max_requests=10**6, record=False)
    per: dict = {m: [] for m in ports}
    for r in range(rounds):
        for mode in (list(ports) if r % 2 == 0 else list(reversed(ports))):
            cell = await closed_loop(clients, op_for(mode), duration=seconds, max_requests=10**7)
            per[mode].append(cell.summary())
    out: dict = {mode: summarize(cells) for mode, cells in per.items()}
    base = out["no-provenance"]["throughput_median"]
    out["ratio"] = round(out["provenance"]["throughput_median"] / base, 3) if base else None
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
    work = Path(tempfile.mkdtemp(prefix="wt-provenance-bench-"))
    engine = EmbeddedEngine(FERRETDB_BIN, work, backend="postgresql")
    uri = engine.start()
    database = "provenance_bench"
    servers = {}
    try:
        loaded = load(uri, database, args.patients, args.authorized)
        servers, token = start_pair(uri, database, "provenance", "no-provenance", {"FHIR_PROVENANCE": "false"},
                                    "user/*.cruds")
        ports = {m: int(servers[m].base.rsplit(":", 1)[1]) for m in MODES}
        result = asyncio.run(measure(ports, token, args.authorized, args.rounds, args.seconds, args.clients))
        with MongoClient(uri) as c:
            result["provenances_written"] = c[database]["Provenance"].count_documents({})
            result["documents_written"] = c[database]["DocumentReference"].count_documents({}) - loaded.get(
                "DocumentReference", 0)
    finally:
        for s in servers.values():
            stop_server(s)
        engine.stop()
    result["dataset"] = loaded
    result["machine"] = machine(loop=loop_kind, clients=args.clients, rounds=args.rounds,
                                seconds_per_cell=args.seconds)
    print(json.dumps(result, indent=2))
    print("\n| request | with Provenance (req/s) | without (req/s) | ratio | target |\n|---|---|---|---|---|")
    print(f"| create | {result['provenance']['throughput_median']} | {result['no-provenance']['throughput_median']} | "
          f"{result['ratio']} | ≥ 0.7 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
