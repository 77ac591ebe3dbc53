"""CRUD benchmark: read-by-id, create and update through the FHIR server against the same operations
done directly with PyMongo on the same engine, with 1, 4 and 16 concurrent clients, in one run.

    .venv/bin/python bench/crud.py                       # FerretDB/SQLite, server with 1 then 2 workers
    .venv/bin/python bench/crud.py --engine ferretdb-pg  # FerretDB on a throw-away PostgreSQL cluster
    .venv/bin/python bench/crud.py --profile             # + a profile of the server under read and create load

What one run does (bench/README.md has the details):
1. starts its engine in a temporary directory;
2. starts `python -m fhir_server.cli serve --fd N` on a socket bound here, FHIR_LOG_LEVEL=WARNING;
3. loads a generated French dataset (bench/dataset.py): organisations, practitioners and
   `--patients` patients, the first `--api-load` of them through the API (POST) and the rest
   written directly in the repository's document layout (FerretDB v1.24 makes every server write
   O(collection size), so a few thousand API creates would take tens of minutes on SQLite);
4. measures each (operation, clients) cell through the server (one pass per `--workers` value)
   with the closed-loop HTTP client in bench/httpclient.py, and with the `raw` and `repo`
   baselines of bench/baseline.py (a separate process);
5. writes bench/results/crud-<engine>-<time>.json (+ .md) and prints the Markdown table.

Pinning (2+ cores, unless --no-pin): this process, i.e. the load generator, runs on CPU 0; the
server (1 worker) and the baseline process run on CPU 1; the engine may use both; a server with
2 workers may use both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from pymongo import AsyncMongoClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _source_root(argv: list[str]) -> Path:
    """The server source to measure: the work tree, or `--git-ref REF` exported with `git archive`
    (so a run measures a known commit even while the work tree is being edited)."""
    if "--git-ref" not in argv:
        return ROOT
    ref = argv[argv.index("--git-ref") + 1]
    dest = Path(tempfile.mkdtemp(prefix="fhir-bench-src-"))
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


SRC = _source_root(sys.argv)
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from common import CpuMeter, closed_loop, use_uvloop  # noqa: E402
from engines import Engine  # noqa: E402
from httpclient import Client, HttpError, encode  # noqa: E402

from fhir_server.fhir.validation import validate_resource  # noqa: E402
from fhir_server.storage.documents import (  # noqa: E402
    F_ID,
    F_JSON,
    F_UPDATED,
    F_VERSION,
    H_OP,
    H_RESOURCE_ID,
    OP_CREATE,
    fhir_instant,
    history_id,
    now_ms,
)

RESULTS = HERE / "results"
OPS = ("read", "update", "create", "search", "prefix")
EXPECT = {"read": 200, "update": 200, "create": 201, "search": 200, "prefix": 200}
# issue 2: read 50 %, create 35 %; issue 8 (embedded engine): read 60 %, search 50 % (both search kinds)
TARGETS = {"read": 0.60, "create": 0.35, "search": 0.50, "prefix": 0.50}
P99_TARGET_MS = 25.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the server process ---------------------------------------------------------------------------

class Server:
    """`fhir-server serve` in its own process, on `--port` (default) or on a socket bound here (`--fd`).

    With `--fd`, uvicorn 0.3x wraps the inherited descriptor as AF_UNIX, so TCP_NODELAY is never set
    on accepted connections and every response waits ~40 ms for the client's delayed ACK (Nagle):
    measured 44 ms for GET /health instead of 0.15 ms. `--bind fd` reproduces it; `--bind fd-nodelay`
    sets TCP_NODELAY on the listening socket (Linux copies it to accepted sockets), which avoids it.
    """

    def __init__(self, uri: str, database: str, workers: int, cpus: str | None, tmp: Path,
                 wrapper: list[str] | None = None, bind: str = "port") -> None:
        sock = None
        if bind == "port":
            from fhir_server.engine.ferretdb import free_port

            self.port = free_port()
            where = ["--host", "127.0.0.1", "--port", str(self.port)]
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if bind == "fd-nodelay":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            self.port = sock.getsockname()[1]
            where = ["--fd", str(sock.fileno())]
        # No token: the benchmark measures FHIR CRUD, not authorization (token checks are not measured).
        env = {**os.environ, "FHIR_MONGODB_URI": uri, "FHIR_DATABASE": database, "FHIR_LOG_LEVEL": "WARNING",
               "FHIR_INSECURE_DEV_MODE": "true", "PYTHONPATH": str(SRC)}
        env.pop("FHIR_PUBLIC_BASE_URL", None)
        cmd = [sys.executable, *(wrapper or ["-m", "fhir_server.cli"]), "serve", *where, "--workers", str(workers)]
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.log = open(tmp / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(),) if sock else (), env=env, cwd=tmp,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if sock is not None:
            sock.close()

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        raw = encode("GET", "/ready", port=self.port)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            c = Client(self.port)
            try:
                status, _, _ = await asyncio.wait_for(c.send(raw), 5)
                if status == 200:
                    return
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                c.close()
            await asyncio.sleep(0.1)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---- dataset ------------------------------------------------------------------------------------

async def post_all(port: int, rtype: str, bodies: list[dict], concurrency: int = 8) -> list[str]:
    """POST every body, return the ids the server assigned (in order)."""
    ids: list[str | None] = [None] * len(bodies)
    reqs = [encode("POST", f"/fhir/{rtype}", orjson.dumps(b), port=port) for b in bodies]
    nxt = iter(range(len(bodies)))

    async def worker() -> None:
        c = Client(port)
        try:
            for i in nxt:
                status, _, body = await c.send(reqs[i])
                if status != 201:
                    raise HttpError(f"POST {rtype}: {status} {body[:300]!r}")
                ids[i] = orjson.loads(body)["id"]
        finally:
            c.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids  # type: ignore[return-value]


def index_fields_fn():
    try:
        from fhir_server.search.extract import index_fields
    except ImportError:
        return lambda r: {}
    return index_fields


async def write_direct(db, patients: list[dict]) -> list[str]:
    """Store version 1 of each patient exactly as Repository._write_version/_apply lay it out."""
    import uuid

    index_fields = index_fields_fn()
    hist, cur, ids = [], [], []
    for p in patients:
        validate_resource(p, expected_type="Patient")  # the dataset is valid FHIR, whatever path stores it
        rid, now = str(uuid.uuid4()), now_ms()
        meta = dict(p.get("meta") or {})
        meta.update(versionId="1", lastUpdated=fhir_instant(now))
        stamped = {"resourceType": "Patient", "id": rid, "meta": meta}
        stamped.update((k, v) for k, v in p.items() if k not in stamped)
        js = orjson.dumps(stamped)
        hist.append({F_ID: history_id(rid, 1), H_RESOURCE_ID: rid, F_VERSION: 1, F_UPDATED: now, H_OP: OP_CREATE,
                     F_JSON: js})
        cur.append({F_ID: rid, F_VERSION: 1, F_UPDATED: now, F_JSON: js, **index_fields(stamped)})
        ids.append(rid)
    for i in range(0, len(ids), 500):
        await db["Patient_history"].insert_many(hist[i:i + 500], ordered=False)
        await db["Patient"].insert_many(cur[i:i + 500], ordered=False)
    return ids


async def load_dataset(args, port: int, db, work: Path) -> dict:
    t0 = time.perf_counter()
    org_ids = await post_all(port, "Organization", dataset.organizations())
    gp_ids = await post_all(port, "Practitioner", dataset.practitioners())
    patients = dataset.patients(args.patients, gp_ids, org_ids, seed=args.seed)
    n_api = min(args.api_load, args.patients) if args.api_load >= 0 else args.patients
    t1 = time.perf_counter()
    api_ids = await post_all(port, "Patient", patients[:n_api])
    t2 = time.perf_counter()
    direct_ids = await write_direct(db, patients[n_api:])
    t3 = time.perf_counter()
    ids = api_ids + direct_ids
    # a directly written patient reads back through the API exactly as stored
    if direct_ids:
        c = Client(port)
        status, _, body = await c.send(encode("GET", f"/fhir/Patient/{direct_ids[-1]}", port=port))
        c.close()
        stored = await db["Patient"].find_one({F_ID: direct_ids[-1]})
        assert status == 200 and body == stored[F_JSON], (status, body[:200])
    rng = random.Random(args.seed + 1)
    rng.shuffle(pairs := list(zip(ids, patients)))
    (work / "ids.json").write_text(json.dumps([i for i, _ in pairs]))
    creates = dataset.patients(args.create_bodies, gp_ids, org_ids, seed=args.seed + 2)
    (work / "create.jsonl").write_bytes(b"\n".join(orjson.dumps(p) for p in creates) + b"\n")
    (work / "search.jsonl").write_bytes(b"\n".join(orjson.dumps(search_params(p)) for _, p in pairs) + b"\n")
    urng = random.Random(args.seed + 3)
    (work / "update.jsonl").write_bytes(b"\n".join(
        i.encode() + b" " + orjson.dumps(dataset.updated(p, i, urng)) for i, p in pairs) + b"\n")
    sizes = [len(orjson.dumps(p)) for p in patients]
    return {
        "patients": args.patients, "patients_via_api": n_api, "patients_direct": len(direct_ids),
        "organizations": len(org_ids), "practitioners": len(gp_ids),
        "patient_json_bytes_mean": round(sum(sizes) / len(sizes)), "create_bodies": len(creates),
        "api_load_s": round(t2 - t1, 2),
        "api_load_per_s": round(n_api / (t2 - t1), 1) if n_api else None,
        "direct_load_s": round(t3 - t2, 2), "total_load_s": round(t3 - t0, 2),
    }


def search_params(patient: dict) -> dict:
    """The two searches of the `search` and `prefix` ops for one patient (each matches it):
    by INS (a token equality) and by the first letters of family and given name (string prefixes,
    answered from prefix tokens, fhir_server/search/prefix.py)."""
    ins = next(i for i in patient["identifier"] if i.get("system") == dataset.INS_NIR_SYSTEM)
    name = patient["name"][0]
    return {"search": [["identifier", f"{ins['system']}|{ins['value']}"]],
            "prefix": [["family", name["family"][:4]], ["given", name["given"][0][:3]]]}


def search_url(params: list) -> str:
    import urllib.parse

    return "/fhir/Patient?" + urllib.parse.urlencode([tuple(p) for p in params], quote_via=urllib.parse.quote,
                                                     safe="/:|")


# ---- measuring the server -----------------------------------------------------------------------

class HttpWork:
    def __init__(self, work: Path, port: int) -> None:
        ids = json.loads((work / "ids.json").read_text())
        self.read = [encode("GET", f"/fhir/Patient/{i}", port=port) for i in ids]
        self.create = [encode("POST", "/fhir/Patient", line, port=port)
                       for line in (work / "create.jsonl").read_bytes().splitlines() if line]
        queries = [orjson.loads(line) for line in (work / "search.jsonl").read_bytes().splitlines() if line]
        self.search = [encode("GET", search_url(q["search"]), port=port) for q in queries]
        self.prefix = [encode("GET", search_url(q["prefix"]), port=port) for q in queries]
        self.update = []
        for line in (work / "update.jsonl").read_bytes().splitlines():
            if line:
                rid, body = line.split(b" ", 1)
                self.update.append(encode("PUT", f"/fhir/Patient/{rid.decode()}", body, port=port))

    def partition(self, op: str, clients: int, offset: int) -> list[list[bytes]]:
        pool = getattr(self, op)
        pool = pool[offset % len(pool):] + pool[:offset % len(pool)]
        return [pool[i::clients] for i in range(clients)]


def http_op(port: int, op: str, items: list[list[bytes]], clients: int, created: list[str]):
    """The closed loop's operation for `op` over HTTP, and the connections it uses."""
    conns = [Client(port) for _ in range(clients)]
    expect = EXPECT[op]

    async def fn(ci: int, n: int) -> None:
        mine = items[ci]
        status, head, body = await conns[ci].send(mine[n % len(mine)])
        if status != expect:
            raise HttpError(f"{status} {body[:200]!r}")
        if op == "create":
            rid = created_id(head)
            if rid:
                created.append(rid)
    return fn, conns


def created_id(head: bytes) -> str | None:
    i = head.find(b"\r\nlocation:")
    if i < 0:
        return None
    line = head[i + 11:head.find(b"\r\n", i + 2) if head.find(b"\r\n", i + 2) > 0 else None].strip().decode()
    parts = line.split("/")
    return parts[parts.index("Patient") + 1] if "Patient" in parts else None


async def cleanup(db, ids: list[str]) -> None:
    for i in range(0, len(ids), 5000):
        chunk = ids[i:i + 5000]
        await db["Patient"].delete_many({F_ID: {"$in": chunk}})
        await db["Patient_history"].delete_many({H_RESOURCE_ID: {"$in": chunk}})


async def measure_server(args, server: Server, workers: int, work: Path, db, engine: Engine, seed: int) -> list[dict]:
    hw = HttpWork(work, server.port)
    meter = CpuMeter({"server": server.proc.pid, "engine": engine.ferret_pid, "postgres": engine.postgres_pid})
    offset = random.Random(seed).randrange(1 << 20)
    cells = []
    for op in args.ops:
        created: list[str] = []

        def make(items, clients_):
            return http_op(server.port, op, items, clients_, created)

        fn, conns = make(hw.partition(op, 1, offset), 1)
        offset += 997
        await closed_loop(1, fn, duration=args.warmup, max_requests=args.max_requests, record=False)
        for c in conns:
            c.close()
        for clients in args.clients:
            fn, conns = make(hw.partition(op, clients, offset), clients)
            offset += 997
            meter.start()
            cell = await closed_loop(clients, fn, duration=args.duration, max_requests=args.max_requests,
                                     max_tail=args.max_tail)
            cpu = meter.stop()
            for c in conns:
                c.close()
            s = cell.summary()
            s.update(target=f"server-w{workers}", op=op, clients=clients, cpu_s={k: round(v, 3) for k, v in cpu.items()})
            log(f"  server-w{workers} {op:6} c={clients:<3} {s['throughput']:>8} req/s  p50 {s['p50_ms']} ms"
                f"  p99 {s['p99_ms']} ms  n={s['requests']} err={s['errors']}")
            cells.append(s)
        if created:
            await cleanup(db, created)
    return cells


def run_wrk(args, port: int, work: Path, clients: int, duration: float) -> dict | None:
    """Cross-check of the read cell with wrk (C, epoll), when it is installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    ids = json.loads((work / "ids.json").read_text())
    (work / "ids.txt").write_text("\n".join(ids) + "\n")
    env = {**os.environ, "BENCH_LUA_DIR": str(HERE / "wrk"), "BENCH_ITEMS": str(work / "ids.txt"),
           "BENCH_MAX_REQUESTS": str(args.max_requests), "BENCH_THREADS": "1"}
    cmd = [wrk, "-t1", f"-c{clients}", f"-d{max(1, int(duration))}s", "--timeout", "30s",
           "-s", str(HERE / "wrk" / "read.lua"), f"http://127.0.0.1:{port}"]
    if args.pin:
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60).stdout
    try:
        js = json.loads(out.split("BENCH_JSON_BEGIN", 1)[1].split("BENCH_JSON_END", 1)[0])
    except (IndexError, ValueError):
        return {"error": out[-500:]}
    lat = js["latency_us"]
    return {"tool": "wrk 4.1 (-t1, read.lua)", "op": "read", "clients": clients, "requests": js["requests"],
            "throughput": round(js["requests"] / (js["duration_us"] / 1e6), 1),
            "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "errors": js["errors"]}


async def run_profiles(args, engine: Engine, work: Path, tmp: Path, client, cells: list[dict]) -> dict:
    """The server under cProfile (CPU clock) for a read and a create cell (4 clients); see profile_server.py."""
    import profile_server

    out = {}
    for op, database in (("read", "bench"), ("create", "bench_profile")):
        path = RESULTS / f"profile-{args.engine}-{op}-{args.stamp}.pstats"
        server = Server(engine.uri, database, 1, "1" if args.pin else None, tmp,
                        wrapper=[str(HERE / "profile_server.py"), "wrap", str(path)], bind=args.bind)
        try:
            await server.ready()
            fn, conns = http_op(server.port, op, HttpWork(work, server.port).partition(op, 4, 0), 4, [])
            await closed_loop(4, fn, duration=args.warmup, max_requests=50, record=False)
            # the same cell without the profiler first: the CPU per request the profile is scaled to
            meter = CpuMeter({"server": server.proc.pid})
            meter.start()
            plain = await closed_loop(4, fn, duration=args.profile_seconds,
                                      max_requests=args.max_requests if op == "read" else args.profile_creates)
            measured = round(1000 * meter.stop()["server"] / plain.requests, 3) if plain.requests else None
            server.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)
            cell = await closed_loop(4, fn, duration=args.profile_seconds,
                                     max_requests=args.max_requests if op == "read" else args.profile_creates)
            server.proc.send_signal(signal.SIGUSR2)
            for _ in range(100):
                if path.exists():
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            for c in conns:
                c.close()
        finally:
            server.stop()
        summary = profile_server.summarize(path, cell.requests, measured)
        summary.update(database=database, file=str(path), throughput_without_profiler=plain.summary()["throughput"],
                       throughput_under_profiler=cell.summary()["throughput"])
        out[op] = summary
        log(f"profile {op}: {cell.requests} requests, {summary['profiled_cpu_ms_per_req']} ms CPU/req under cProfile "
            f"({measured} without) -> {path}")
        log(profile_server.render_markdown(op, summary))
    await client.drop_database("bench_profile")
    return out


# ---- baselines ----------------------------------------------------------------------------------

def run_baseline(args, mode: str, engine: Engine, database: str, work: Path) -> list[dict]:
    out = work / f"baseline-{mode}.json"
    cmd = [sys.executable, str(HERE / "baseline.py"), "--mode", mode, "--workdir", str(work), "--uri", engine.uri,
           "--db", database, "--ops", ",".join(args.ops), "--clients", ",".join(map(str, args.clients)),
           "--duration", str(args.duration), "--warmup", str(args.warmup), "--max-requests", str(args.max_requests),
           "--max-tail", str(args.max_tail), "--seed", str(args.seed), "--out", str(out)]
    if engine.ferret_pid:
        cmd += ["--engine-pid", str(engine.ferret_pid)]
    if engine.postgres_pid:
        cmd += ["--postgres-pid", str(engine.postgres_pid)]
    if args.pin:
        cmd = ["taskset", "-c", "1", *cmd]
    subprocess.run(cmd, check=True, cwd=SRC, env={**os.environ, "PYTHONPATH": str(SRC), "BENCH_SRC": str(SRC)})
    return json.loads(out.read_text())["cells"]


# ---- report -------------------------------------------------------------------------------------

def cpu_ms_per_req(cell: dict, key: str) -> float | None:
    cpu = cell.get("cpu_s", {}).get(key)
    return round(cpu * 1000 / cell["requests"], 3) if cpu is not None and cell["requests"] else None


def markdown(report: dict) -> str:
    cells = report["cells"]
    by = {(c["target"], c["op"], c["clients"]): c for c in cells}
    targets = [t for t in dict.fromkeys(c["target"] for c in cells)]
    lines = ["| op | clients | target | req/s | p50 ms | p99 ms | errors | app CPU ms/req | engine CPU ms/req | "
             "other load (cores) | vs raw |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for op in report["config"]["ops"]:
        for clients in report["config"]["clients"]:
            raw = by.get(("raw", op, clients))
            for t in targets:
                c = by.get((t, op, clients))
                if c is None:
                    continue
                app = cpu_ms_per_req(c, "server" if t.startswith("server") else "self")
                eng = (cpu_ms_per_req(c, "engine") or 0) + (cpu_ms_per_req(c, "postgres") or 0)
                ratio = (f"{100 * c['throughput'] / raw['throughput']:.0f} %"
                         if raw and raw["throughput"] and t != "raw" else "")
                other = c.get("cpu_s", {}).get("unaccounted", 0.0) / c["elapsed_s"] if c["elapsed_s"] else 0.0
                lines.append(f"| {op} | {clients} | {t} | {c['throughput']:.0f} | {c['p50_ms']:.1f} | "
                             f"{c['p99_ms']:.1f} | {c['errors']} | {app if app is not None else ''} | "
                             f"{eng:.2f} | {other:.2f} | {ratio} |")
    return "\n".join(lines)


def verdicts(report: dict) -> list[dict]:
    by = {(c["target"], c["op"], c["clients"]): c for c in report["cells"]}
    out = []
    top = max(report["config"]["clients"])
    for t in dict.fromkeys(c["target"] for c in report["cells"] if c["target"].startswith("server")):
        for op in report["config"]["ops"]:
            c, raw = by.get((t, op, top)), by.get(("raw", op, top))
            if c is None:
                continue
            v = {"target": t, "op": op, "clients": top, "p99_ms": c["p99_ms"],
                 "p99_met": c["p99_ms"] < P99_TARGET_MS}
            if raw and raw["throughput"]:
                v["ratio"] = round(c["throughput"] / raw["throughput"], 3)
                if op in TARGETS:
                    v["ratio_target"] = TARGETS[op]
                    v["ratio_met"] = v["ratio"] >= TARGETS[op]
            out.append(v)
    return out


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "free_h": mem, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def versions() -> dict:
    from importlib.metadata import version

    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    if SRC != ROOT:
        ref = sys.argv[sys.argv.index("--git-ref") + 1]
        out = {"source": f"git archive {ref} ({git('rev-parse', '--short', ref)})"}
    else:
        dirty = [x for x in git("status", "--porcelain").splitlines() if x and not x[3:].startswith("bench/")]
        out = {"source": f"work tree at {git('rev-parse', '--short', 'HEAD')}"
                         + (f" + {len(dirty)} uncommitted files" if dirty else "")}
    import fhir_server

    out["fhir_server_path"] = str(Path(fhir_server.__file__).parent)
    for pkg in ("pymongo", "uvicorn", "starlette", "orjson", "pydantic", "fhir.resources", "uvloop", "httptools"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = None
    return out


# ---- main ---------------------------------------------------------------------------------------

async def amain(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    work = tmp / "work"
    work.mkdir()
    engine = Engine(args.engine, tmp / "engine")
    database = "bench"
    report: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("out",)},
                    "machine": machine(), "versions": versions(), "cells": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    t_start = time.perf_counter()
    servers: list[Server] = []
    try:
        log(f"engine {args.engine}: starting in {tmp}")
        uri = engine.start()
        report["engine"] = engine.describe()
        if args.pin:
            os.sched_setaffinity(0, {0})  # the load generator; the engine was started before, on all cores
        client = AsyncMongoClient(uri, tz_aware=True, uuidRepresentation="standard")
        db = client[database]
        for w_index, workers in enumerate(args.workers):
            cpus = ("1" if workers == 1 else None) if args.pin else None
            server = Server(uri, database, workers, cpus, tmp, bind=args.bind)
            servers.append(server)
            await server.ready()
            log(f"server: {workers} worker(s) on port {server.port}" + (f", CPU {cpus}" if cpus else ""))
            if w_index == 0:
                log(f"dataset: {args.patients} patients ({args.api_load} through the API)")
                report["dataset"] = await load_dataset(args, server.port, db, work)
                log(f"dataset: {report['dataset']}")
            report["cells"] += await measure_server(args, server, workers, work, db, engine, args.seed + w_index)
            if w_index == 0 and args.wrk and "read" in args.ops:
                report["wrk_check"] = run_wrk(args, server.port, work, max(args.clients), args.duration)
                log(f"wrk cross-check: {report['wrk_check']}")
            server.stop()
            servers.remove(server)
        for mode in args.baselines:
            log(f"baseline {mode}")
            report["cells"] += run_baseline(args, mode, engine, database, work)
        if args.profile:
            report["profile"] = await run_profiles(args, engine, work, tmp, client, report["cells"])
        report["collection_sizes"] = {
            "Patient": await db["Patient"].count_documents({}),
            "Patient_history": await db["Patient_history"].count_documents({}),
        }
        await client.close()
    finally:
        for s in servers:
            s.stop()
        engine.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            if SRC != ROOT:
                shutil.rmtree(SRC, ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["verdicts"] = verdicts(report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=["ferretdb-sqlite", "ferretdb-pg"], default="ferretdb-sqlite")
    p.add_argument("--workers", default="1,2", help="server worker counts to measure, one pass each")
    p.add_argument("--clients", default="1,4,16", help="concurrent clients per cell")
    p.add_argument("--ops", default="read,update,create")
    p.add_argument("--baselines", default="raw,repo", help="raw (PyMongo) and/or repo (Repository in-process)")
    p.add_argument("--patients", type=int, default=2000)
    p.add_argument("--api-load", type=int, default=300, help="patients loaded through the API (-1: all)")
    p.add_argument("--create-bodies", type=int, default=500, help="distinct new patients the create cells cycle over")
    p.add_argument("--duration", type=float, default=4.0, help="seconds during which a cell starts requests")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured single-client load per op")
    p.add_argument("--max-requests", type=int, default=20000, help="per cell")
    p.add_argument("--max-tail", type=float, default=60.0, help="how long a cell waits for its last requests")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--bind", choices=["port", "fd", "fd-nodelay"], default="port",
                   help="how the server gets its socket (see Server: --fd costs ~40 ms per request today)")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip the wrk cross-check of the read cell")
    p.add_argument("--profile", action="store_true", help="also profile the server under read and create load")
    p.add_argument("--profile-seconds", type=float, default=5.0)
    p.add_argument("--profile-creates", type=int, default=150, help="creates in the profiled create cell (at most)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--git-ref", help="measure this commit (exported with git archive) instead of the work tree")
    p.add_argument("--out", help="JSON result path (default bench/results/crud-<engine>-<time>.json)")
    args = p.parse_args(argv)
    args.workers = [int(x) for x in args.workers.split(",") if x]
    args.clients = [int(x) for x in args.clients.split(",") if x]
    args.ops = [x for x in args.ops.split(",") if x]
    args.baselines = [x for x in args.baselines.split(",") if x]
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        args.pin = False
    args.loop = use_uvloop()
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    report = asyncio.run(amain(args))
    out = Path(args.out) if args.out else RESULTS / f"crud-{args.engine}-{args.stamp}.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    table = markdown(report)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print()
    for v in report["verdicts"]:
        ratio = (f"server/raw {100 * v['ratio']:.0f} % (target {100 * v['ratio_target']:.0f} %: "
                 f"{'met' if v['ratio_met'] else 'NOT met'})") if "ratio_target" in v else (
            f"server/raw {100 * v['ratio']:.0f} %" if "ratio" in v else "")
        print(f"- {v['target']} {v['op']} @ {v['clients']} clients: p99 {v['p99_ms']} ms "
              f"({'met' if v['p99_met'] else 'NOT met'} < {P99_TARGET_MS:.0f} ms); {ratio}")
    print(f"\nresults: {out} (wall {report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
