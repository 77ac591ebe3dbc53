"""What checking a client secret costs (client_secret_basic at `/auth/introspect`): the right
secret of a confidential-symmetric client, and a wrong secret for a client id that does not exist
(which must cost the same, so that timing does not tell which ids exist). Reported as server CPU
per request (its worker processes and threads included) and client-observed latency, in one run
on one server. Only 127.0.0.1 is contacted; the throttles are lifted so that every check runs.

Compare two commits by running this file from each (docs/benchmarks.md, "Fifth pass").

    .venv/bin/python bench/client_secret.py [--requests 100]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, percentile, tree_cpu  # noqa: E402
from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.auth_helpers import add_client  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402


def run(requests: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="secret-bench-"))
    engine = EmbeddedFerretDB(FERRETDB_BIN, work / "ferretdb")
    uri = engine.start()
    server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_ADDRESS_MAX_ATTEMPTS": "100000",
                                "FHIR_CLIENT_MAX_FAILURES": "100000"})
    secret = secrets.token_urlsafe(32)  # what `fhir-server clients add` draws
    try:
        add_client(server, "conf", "confidential-symmetric", "patient/*.rs", secret=secret)
        modes = {"right secret": lambda: ("conf", secret, 200),
                 "unknown client id": lambda: ("nobody-" + uuid.uuid4().hex, "wrong", 401)}
        lat: dict[str, list[float]] = {m: [] for m in modes}
        cpu = dict.fromkeys(modes, 0.0)
        with httpx.Client(base_url=server.base, timeout=60) as c:
            for m, make in modes.items():  # warm-up
                for _ in range(5):
                    cid, sec, status = make()
                    assert c.post("/auth/introspect", auth=(cid, sec), data={"token": "x"}).status_code == status
            for r in range(4):  # the modes alternate, so a drift in the machine's load hits both
                for m in (list(modes) if r % 2 == 0 else list(reversed(modes))):
                    before = tree_cpu(server.process.pid)
                    for _ in range(requests // 4):
                        cid, sec, status = modes[m]()
                        t = time.perf_counter()
                        resp = c.post("/auth/introspect", auth=(cid, sec), data={"token": "x"})
                        lat[m].append(time.perf_counter() - t)
                        assert resp.status_code == status, resp.text
                    cpu[m] += tree_cpu(server.process.pid) - before
        out: dict = {}
        for m in modes:
            s = sorted(lat[m])
            out[m] = {"requests": len(s), "server_cpu_ms": 1e3 * cpu[m] / len(s), "p50_ms": 1e3 * percentile(s, 50),
                      "p99_ms": 1e3 * percentile(s, 99)}
        out["machine"] = machine()
        return out
    finally:
        stop_server(server)
        engine.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100, help="requests per mode")
    args = ap.parse_args()
    result = run(args.requests)
    print(json.dumps(result, indent=2))
    print("\n| check | server CPU per request | p50 | p99 |\n|---|---|---|---|")
    for m in ("right secret", "unknown client id"):
        r = result[m]
        print(f"| {m} | {r['server_cpu_ms']:.2f} ms | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
