"""`/health` and read-by-id latency while one client floods the server with maximum-size hostile
requests (issue 12): the same probes without and then with the flood, in one run on one server,
alternating over `--rounds`.

Target: p99 under the flood within 3x of p99 without it. The flood is bounded (a fixed number of
requests from one client, a few connections) and only 127.0.0.1 is contacted. Kinds of request:
  bundle   a batch Bundle of FHIR_MAX_BUNDLE_ENTRIES creates (~20 MB) with a read-only token (403 each)
  big      a Patient of almost FHIR_MAX_RESOURCE_BYTES, invalid (gender), with a token that may create
  deep     JSON nested 1000 levels
  secret   a wrong client secret for a made-up client id (throttles lifted: each one is checked)
  search   a search with 500 _revinclude (refused by the caps)
`flood_statuses` counts the answers per kind; 0: the server closed the connection before answering.
`--burn N` is the control: N processes that only use CPU instead of the flood, the floor that
sharing the machine's cores puts under the probes' tail whatever the server does.

    .venv/bin/python bench/hostile.py [--probes 300] [--flood 40] [--connections 4] [--rounds 3]
    .venv/bin/python bench/hostile.py --burn 2 [--nice-flood 19]
    .venv/bin/python bench/hostile.py --rounds 8 --alternate-policy workers   # SCHED_BATCH on/off, one run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, percentile, process_tree  # noqa: E402
from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.auth_helpers import add_client, backend_token, public_jwks, rsa_key  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}
MAX_RESOURCE = 8 * 1024 * 1024
ENTRIES = 1000


def _bodies() -> dict[str, bytes]:
    patient = {"resourceType": "Patient", "name": [{"family": "D" * 20000, "given": ["x" * 20]}] * 1}
    entry = {"resource": patient, "request": {"method": "POST", "url": "Patient"}}
    bundle = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [entry] * ENTRIES}).encode()
    filler = "y" * (MAX_RESOURCE - 2048)
    big = json.dumps({"resourceType": "Patient", "name": [{"family": filler}], "gender": "robot"}).encode()
    deep = b'{"resourceType":"Patient","extension":' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    return {"bundle": bundle, "big": big, "deep": deep}


def _probe(server, token: str, pid: str, n: int, stop=None) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"health": [], "read": []}
    with httpx.Client(timeout=120) as c:
        for _ in range(n):
            if stop is not None and stop.is_set():
                break
            t = time.perf_counter()
            assert c.get(server.base + "/health").status_code == 200
            lat["health"].append(time.perf_counter() - t)
            t = time.perf_counter()
            r = c.get(f"{server.fhir_base}/Patient/{pid}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            lat["read"].append(time.perf_counter() - t)
    return lat


KINDS = ["bundle", "big", "deep", "secret", "search"]


def tokens(server) -> tuple[str, str]:
    """Backend-services tokens of two clients registered on `server`: an operator service that may
    create and read everything (its reads are not bound by patient consent), and a read-only one."""
    key = rsa_key()
    add_client(server, "bench", "confidential-asymmetric", "system/*.cruds", redirect_uris=(), jwks=public_jwks(key),
               operator=True)
    token = backend_token(server, "bench", key, "system/*.cruds")["access_token"]
    ro = rsa_key()
    add_client(server, "ro", "confidential-asymmetric", "system/*.rs", redirect_uris=(), jwks=public_jwks(ro))
    return token, backend_token(server, "ro", ro, "system/*.rs")["access_token"]


def _flood(base: str, fhir_base: str, ro_token: str, rw_token: str, count: int, connections: int,
           kinds: list[str], nice: int, ready, go, done, results) -> None:
    """The hostile client, in a process of its own: its bodies are built (and its GIL held) apart
    from the probing client, which stands for another user of the server. `nice` lowers its CPU
    priority: the client shares the server's two cores here, which a remote client would not."""
    if nice:
        os.nice(nice)
    bodies = _bodies()
    statuses: dict[str, list[int]] = {}
    local = threading.local()

    def one(i: int) -> None:
        kind = kinds[i % len(kinds)]
        if not hasattr(local, "client"):  # one kept-alive connection per flooding thread
            local.client = httpx.Client(timeout=300)
        c = local.client
        auth = {"Authorization": f"Bearer {ro_token}"}
        try:
            r = send(c, kind, auth, i)
        except httpx.TransportError:  # the server closed the connection on a refused large body
            statuses.setdefault(kind, []).append(0)
            return
        statuses.setdefault(kind, []).append(r.status_code)

    def send(c: httpx.Client, kind: str, auth: dict, i: int) -> httpx.Response:
        if kind == "bundle":
            r = c.post(fhir_base, content=bodies["bundle"], headers={**FHIR, **auth})
        elif kind in ("big", "deep"):  # a token that may create: the whole body is parsed and validated
            r = c.post(fhir_base + "/Patient", content=bodies[kind],
                       headers={**FHIR, "Authorization": f"Bearer {rw_token}"})
        elif kind == "secret":
            r = c.post(base + "/auth/token", auth=(f"guess-{i}", "wrong"),
                       data={"grant_type": "client_credentials"})
        else:
            r = c.get(fhir_base + "/Patient", params=[("_revinclude", "DocumentReference:subject")] * 500,
                      headers=auth)
        return r

    ready.set()
    go.wait()
    try:
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(one, range(count)))
    finally:
        results.put(statuses)
        done.set()


def _burn(nice: int, halt) -> None:
    """A process that only uses CPU: with `--burn N`, the floor this machine puts under the probes'
    tail when its cores are shared, whatever the server does."""
    if nice:
        os.nice(nice)
    while not halt.is_set():
        sum(range(100_000))


def _set_policy(pids: list[int], policy: int, only_niced: bool) -> None:
    """Every thread of `pids` (only those with a lowered priority when `only_niced`) to `policy`."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                if not only_niced or os.getpriority(os.PRIO_PROCESS, tid) > base:
                    os.sched_setscheduler(tid, policy, os.sched_param(0))
            except OSError:
                pass


def _pooled(quiet: dict[str, list[float]], loud: dict[str, list[float]]) -> dict:
    out: dict = {}
    for what in ("health", "read"):
        q, f = sorted(quiet[what]), sorted(loud[what])
        out[what] = {"p50_quiet_ms": 1e3 * percentile(q, 50), "p99_quiet_ms": 1e3 * percentile(q, 99),
                     "p50_flood_ms": 1e3 * percentile(f, 50), "p99_flood_ms": 1e3 * percentile(f, 99)}
        out[what]["p99_ratio"] = out[what]["p99_flood_ms"] / out[what]["p99_quiet_ms"]
    return out


def run(probes: int, flood: int, connections: int, kinds: list[str], env: dict[str, str] | None = None,
        nice: int = 0, rounds: int = 1, burn: int = 0, alternate: str | None = None) -> dict:
    """`alternate`: "workers" (the server's lowered-priority threads and worker processes) or "engine"
    (every FerretDB thread) run under SCHED_BATCH in half the rounds and SCHED_OTHER in the other
    half (order ABBA...), and the result has the percentiles of each half (`by_policy`)."""
    work = Path(tempfile.mkdtemp(prefix="hostile-bench-"))
    engine = EmbeddedFerretDB(FERRETDB_BIN, work / "ferretdb")
    uri = engine.start()
    server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_MAX_BODY_BYTES": str(32 * 1024 * 1024),
                                "FHIR_MAX_RESOURCE_BYTES": str(MAX_RESOURCE), "FHIR_ADDRESS_MAX_ATTEMPTS": "100000",
                                "FHIR_CLIENT_MAX_FAILURES": "100000", **(env or {})})
    try:
        token, ro_token = tokens(server)
        with httpx.Client(timeout=30) as c:
            pid = c.post(server.fhir_base + "/Patient", json={"resourceType": "Patient", "name": [{"family": "Dupont"}]},
                         headers={**FHIR, "Authorization": f"Bearer {token}"}).json()["id"]
        _probe(server, token, pid, 50)  # warm-up
        quiet: dict[str, list[float]] = {"health": [], "read": []}
        loud: dict[str, list[float]] = {"health": [], "read": []}
        statuses: dict[str, Counter[int]] = {}
        flood_seconds, per_round = 0.0, []
        by_policy: dict[str, tuple[dict, dict]] = {}
        mp = multiprocessing.get_context("spawn")
        for r in range(rounds):  # quiet and flood alternate: a drift in the machine's load hits both
            policy = ("batch" if (r % 4) in (1, 2) else "other") if alternate else ""
            if alternate:
                target = [engine.process.pid] if alternate == "engine" else process_tree(server.process.pid)
                _set_policy(target, os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER, alternate == "workers")
            q = _probe(server, token, pid, probes)
            if burn:  # the control: processes that only use CPU, no request at all
                halt = mp.Event()
                burners = [mp.Process(target=_burn, args=(nice, halt)) for _ in range(burn)]
                for b in burners:
                    b.start()
                started = time.perf_counter()
                f = _probe(server, token, pid, probes)
                halt.set()
                for b in burners:
                    b.join()
                flood_seconds += time.perf_counter() - started
            else:
                ready, go, stop, results = mp.Event(), mp.Event(), mp.Event(), mp.Queue()
                flooder = mp.Process(target=_flood, args=(server.base, server.fhir_base, ro_token, token, flood,
                                                          connections, kinds, nice, ready, go, stop, results))
                flooder.start()
                ready.wait()  # the hostile bodies are built before the clock starts
                started = time.perf_counter()
                go.set()
                f = _probe(server, token, pid, probes * 100, stop)
                for kind, codes in results.get().items():
                    statuses.setdefault(kind, Counter()).update(codes)
                flooder.join()
                flood_seconds += time.perf_counter() - started
            per_round.append({w: round(percentile(sorted(f[w]), 99) / percentile(sorted(q[w]), 99), 2)
                              for w in ("health", "read")})
            for w in ("health", "read"):
                quiet[w] += q[w]
                loud[w] += f[w]
            if alternate:
                pq, pf = by_policy.setdefault(policy, ({"health": [], "read": []}, {"health": [], "read": []}))
                for w in ("health", "read"):
                    pq[w] += q[w]
                    pf[w] += f[w]
        out: dict = {"rounds": rounds, "probes_quiet": len(quiet["health"]), "probes_flood": len(loud["health"]),
                     "flood_requests": flood * rounds, "flood_seconds": round(flood_seconds, 1), "flood_nice": nice,
                     "flood_statuses": {k: dict(sorted(v.items())) for k, v in statuses.items()}, "p99_ratio_per_round": per_round}
        out.update(_pooled(quiet, loud))
        if alternate:
            out["alternate_policy"] = alternate
            out["by_policy"] = {p: {**_pooled(pq, pf), "probes_flood": len(pf["health"])} for p, (pq, pf) in by_policy.items()}
        out["machine"] = machine()
        return out
    finally:
        stop_server(server)
        engine.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=300, help="probe pairs without the flood, per round")
    ap.add_argument("--flood", type=int, default=40, help="hostile requests per round")
    ap.add_argument("--rounds", type=int, default=3, help="quiet probes then flood, this many times; the "
                                                          "percentiles pool every round's probes")
    ap.add_argument("--connections", type=int, default=4, help="hostile requests in flight at once")
    ap.add_argument("--kinds", default=",".join(KINDS), help="kinds of hostile request, comma-separated")
    ap.add_argument("--nice-flood", type=int, default=0, metavar="N",
                    help="run the flooding client at this nice value (it shares the server's cores here)")
    ap.add_argument("--burn", type=int, default=0, metavar="N",
                    help="control: instead of the flood, N processes that only use CPU (at --nice-flood)")
    ap.add_argument("--alternate-policy", choices=("workers", "engine"), default=None,
                    help="run the server's low-priority threads and worker processes, or the engine, under "
                         "SCHED_BATCH in half the rounds and SCHED_OTHER in the others (use an even --rounds)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="server setting for this run (e.g. FHIR_AUDIT=false to compare)")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    result = run(args.probes, args.flood, args.connections, args.kinds.split(","), env, args.nice_flood, args.rounds,
                 args.burn, args.alternate_policy)
    print(json.dumps(result, indent=2))
    print("\n| probe | p50 quiet | p99 quiet | p50 flood | p99 flood | p99 ratio (target ≤ 3) |\n|---|---|---|---|---|---|")
    for label, part in [("", result), *((f" ({p})", v) for p, v in result.get("by_policy", {}).items())]:
        for what in ("health", "read"):
            r = part[what]
            print(f"| {what}{label} | {r['p50_quiet_ms']:.2f} ms | {r['p99_quiet_ms']:.2f} ms | {r['p50_flood_ms']:.2f} ms | "
                  f"{r['p99_flood_ms']:.2f} ms | {r['p99_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
