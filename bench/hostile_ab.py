"""`bench/hostile.py`'s measurement for two versions of the server in one run: a server from another
source tree (`--old`, e.g. a `git worktree` of an earlier commit) and one from this tree, each on its
own FerretDB, measured in alternation (ABBA...) round after round, so that the drift of a shared
machine's load falls on both alike. Runs one after the other on these machines differed more from
each other than the versions did (docs/benchmarks.md, "Sixth pass"). `--flood 0`: quiet probes only.

    git worktree add --detach /tmp/old <commit>
    .venv/bin/python bench/hostile_ab.py --old /tmp/old [--rounds 8] [--flood 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from bench.hostile import FHIR, KINDS, MAX_RESOURCE, _flood, _pooled, _probe, tokens  # noqa: E402
from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.conftest import FERRETDB_BIN, Server, stop_server  # noqa: E402

SETTINGS = {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_MAX_BODY_BYTES": str(32 * 1024 * 1024),
            "FHIR_MAX_RESOURCE_BYTES": str(MAX_RESOURCE), "FHIR_ADDRESS_MAX_ATTEMPTS": "100000",
            "FHIR_CLIENT_MAX_FAILURES": "100000", "FHIR_LOG_LEVEL": "WARNING"}


def _start(tree: Path, uri: str) -> Server:
    """`fhir-server serve` from the source tree `tree` (its code first on the path)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    database = "t_" + uuid.uuid4().hex[:12]
    env = {**os.environ, "PYTHONPATH": str(tree), "FHIR_MONGODB_URI": uri, "FHIR_DATABASE": database, **SETTINGS}
    env.pop("FHIR_PUBLIC_BASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--fd", str(sock.fileno())],
                            pass_fds=(sock.fileno(),), env=env, cwd=tree)
    server = Server(proc, f"http://127.0.0.1:{sock.getsockname()[1]}", uri, database)
    sock.close()
    assert httpx.get(server.base + "/ready", timeout=60).status_code == 200
    return server


def _prepare(server: Server) -> tuple[str, str, str]:
    token, ro_token = tokens(server)
    pid = httpx.post(server.fhir_base + "/Patient", json={"resourceType": "Patient", "name": [{"family": "Dupont"}]},
                     headers={**FHIR, "Authorization": f"Bearer {token}"}).json()["id"]
    _probe(server, token, pid, 50)  # warm-up
    return token, ro_token, pid


def run(old: Path, rounds: int, probes: int, flood: int, connections: int) -> dict:
    engines: list[EmbeddedFerretDB] = []
    servers: dict[str, tuple[Server, str, str, str]] = {}
    try:
        for name, tree in (("old", old), ("new", ROOT)):
            engine = EmbeddedFerretDB(FERRETDB_BIN, Path(tempfile.mkdtemp(prefix="hostile-ab-")) / "ferretdb")
            engines.append(engine)
            server = _start(tree, engine.start())
            servers[name] = (server, *_prepare(server))
        mp = multiprocessing.get_context("spawn")
        quiet = {n: {"health": [], "read": []} for n in servers}
        loud = {n: {"health": [], "read": []} for n in servers}
        seconds = dict.fromkeys(servers, 0.0)
        for r in range(rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                server, token, ro_token, pid = servers[name]
                q = _probe(server, token, pid, probes)
                f = q
                if flood:
                    ready, go, stop, results = mp.Event(), mp.Event(), mp.Event(), mp.Queue()
                    flooder = mp.Process(target=_flood, args=(server.base, server.fhir_base, ro_token, token, flood,
                                                              connections, KINDS, 0, ready, go, stop, results))
                    flooder.start()
                    ready.wait()
                    started = time.perf_counter()
                    go.set()
                    f = _probe(server, token, pid, probes * 100, stop)
                    results.get()
                    flooder.join()
                    seconds[name] += time.perf_counter() - started
                for w in ("health", "read"):
                    quiet[name][w] += q[w]
                    loud[name][w] += f[w]
        return {"old_tree": str(old), "rounds": rounds, "flood_per_round": flood,
                "versions": {n: {**_pooled(quiet[n], loud[n]), "probes_flood": len(loud[n]["health"]),
                                 "flood_seconds": round(seconds[n], 1)} for n in servers},
                "machine": machine()}
    finally:
        for server, *_ in servers.values():
            stop_server(server)
        for engine in engines:
            engine.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="source tree of the other version (a git worktree)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds; each measures both versions, ABBA")
    ap.add_argument("--probes", type=int, default=300, help="probe pairs without the flood, per round and version")
    ap.add_argument("--flood", type=int, default=60, help="hostile requests per round and version (0: quiet only)")
    ap.add_argument("--connections", type=int, default=4, help="hostile requests in flight at once")
    args = ap.parse_args()
    result = run(args.old.resolve(), args.rounds, args.probes, args.flood, args.connections)
    print(json.dumps(result, indent=2))
    print("\n| version | probe | p50 quiet | p99 quiet | p50 flood | p99 flood | p99 ratio | flood seconds |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, v in result["versions"].items():
        for what in ("health", "read"):
            r = v[what]
            print(f"| {name} | {what} | {r['p50_quiet_ms']:.2f} ms | {r['p99_quiet_ms']:.2f} ms | {r['p50_flood_ms']:.2f} ms "
                  f"| {r['p99_flood_ms']:.2f} ms | {r['p99_ratio']:.2f} | {v['flood_seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
