"""Where the server's CPU goes: the real server process (1 worker, pinned like the benchmark) runs
under cProfile with a per-thread CPU clock (`time.thread_time`), switched on by SIGUSR1 and off
(and dumped) by SIGUSR2 around one measured cell, so start-up and warm-up are not in the profile
and waiting for the engine costs nothing (a wall-clock sampler such as pyinstrument charges the
time uvloop spends blocked in epoll to the next Python callback, here PyMongo's network layer).

cProfile's own overhead inflates the profiled CPU (roughly in proportion to the number of Python
calls), so the summary gives each cost as a share of the profiled CPU and scales it to the CPU per
request measured without the profiler.

Run by `crud.py --profile`. The server process runs the wrapper mode:

    python bench/profile_server.py wrap OUT.pstats serve --port N --workers 1
"""

from __future__ import annotations

import pstats
import signal
import sys
import time
from pathlib import Path


def wrap(out_path: str, cli_args: list[str]) -> int:
    import cProfile

    from fhir_server import cli

    prof = cProfile.Profile(time.thread_time)

    def on(signum, frame) -> None:
        prof.enable()

    def off(signum, frame) -> None:
        prof.disable()
        prof.dump_stats(out_path)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    try:
        return cli.main(cli_args)
    except SystemExit as exc:
        return exc.code or 0


# ---- analysis (imported by crud.py) -------------------------------------------------------------

# Inclusive costs worth naming: (label, file suffix, function name).
GROUPS = [
    ("HTTP endpoint, total (fhir_endpoint)", "fhir_server/rest/app.py", "fhir_endpoint"),
    ("validation (validate_resource)", "fhir_server/fhir/validation.py", "validate_resource"),
    ("  pydantic model validation (structural_issues)", "fhir_server/fhir/validation.py", "structural_issues"),
    ("  JSON rules walk (json_rule_issues)", "fhir_server/fhir/validation.py", "json_rule_issues"),
    ("  required bindings (check_required_bindings)", "fhir_server/fhir/bindings.py", "check_required_bindings"),
    ("search index extraction (index_fields)", "fhir_server/search/extract.py", "index_fields"),
    ("request body JSON parse (parse_json_body)", "fhir_server/fhir/validation.py", "parse_json_body"),
    ("interaction parse (interaction.parse)", "fhir_server/rest/interaction.py", "parse"),
    ("dispatch.execute (access decision + handler)", "fhir_server/rest/dispatch.py", "execute"),
    ("Repository.read", "fhir_server/storage/repository.py", "read"),
    ("Repository.create", "fhir_server/storage/repository.py", "create"),
    ("Repository.update", "fhir_server/storage/repository.py", "update"),
    ("  Repository._write_version", "fhir_server/storage/repository.py", "_write_version"),
    ("  Repository._current_version", "fhir_server/storage/repository.py", "_current_version"),
    ("PyMongo find_one", "pymongo/asynchronous/collection.py", "find_one"),
    ("PyMongo insert_one", "pymongo/asynchronous/collection.py", "insert_one"),
    ("PyMongo replace_one", "pymongo/asynchronous/collection.py", "replace_one"),
    ("response rendering (render)", "fhir_server/rest/render.py", "render"),
    ("write_result (headers, Location, body)", "fhir_server/rest/handlers/common.py", "write_result"),
    ("version_headers (ETag, Last-Modified)", "fhir_server/rest/result.py", "version_headers"),
    ("observability middleware (excl. app)", "fhir_server/ops/observability.py", "__call__"),
    ("uvicorn httptools data_received", "uvicorn/protocols/http/httptools_impl.py", "data_received"),
    ("uvicorn RequestResponseCycle.send", "uvicorn/protocols/http/httptools_impl.py", "send"),
    ("starlette Response.__call__", "starlette/responses.py", "__call__"),
    ("starlette Request.query_params", "starlette/requests.py", "query_params"),
    ("uuid4 (request ids, resource ids)", "uuid.py", "uuid4"),
]


def _short(key: tuple) -> str:
    file, line, func = key
    for marker in ("site-packages/", "/fhir_server/", "/lib/python3"):
        if marker in file:
            file = ("fhir_server/" if marker == "/fhir_server/" else "") + file.split(marker, 1)[1]
            break
    return f"{func}  ({file}:{line})" if line else func


def summarize(pstats_path: Path, requests: int, measured_cpu_ms_per_req: float | None, top: int = 20) -> dict:
    st = pstats.Stats(str(pstats_path)).stats  # key -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in st.values())
    per_req = 1000 * total / requests if requests else 0.0
    scale = (measured_cpu_ms_per_req / per_req) if measured_cpu_ms_per_req and per_req else None

    def cost(seconds: float) -> dict:
        share = seconds / total if total else 0.0
        out = {"pct": round(100 * share, 1), "profiled_ms_per_req": round(1000 * seconds / requests, 3)}
        if scale is not None:
            out["est_ms_per_req"] = round(share * measured_cpu_ms_per_req, 3)
        return out

    top_self = sorted(st.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    groups = []
    for label, file_suffix, func in GROUPS:
        ct = sum(v[3] for k, v in st.items() if k[0].endswith(file_suffix) and k[2] == func)
        if ct > 0:
            if label.startswith("observability"):
                inner = sum(v[3] for k, v in st.items() if k[0].endswith("starlette/middleware/exceptions.py")
                            and k[2] == "__call__")
                ct = max(0.0, ct - inner)
            groups.append({"what": label, **cost(ct)})
    return {
        "requests": requests,
        "profiled_cpu_ms_per_req": round(per_req, 3),
        "measured_cpu_ms_per_req_without_profiler": measured_cpu_ms_per_req,
        "groups_inclusive": groups,
        "top_self": [{"function": _short(k), "calls_per_req": round(v[1] / requests, 1) if requests else None,
                      **cost(v[2])} for k, v in top_self],
    }


def render_markdown(op: str, s: dict) -> str:
    lines = [f"**{op}** — {s['requests']} requests profiled; server CPU {s['measured_cpu_ms_per_req_without_profiler']}"
             f" ms/request without the profiler ({s['profiled_cpu_ms_per_req']} ms with it).", "",
             "| inclusive cost | share of server CPU | est. ms/request |", "|---|---:|---:|"]
    for g in s["groups_inclusive"]:
        lines.append(f"| {g['what']} | {g['pct']} % | {g.get('est_ms_per_req', '')} |")
    lines += ["", "| top self time | calls/request | share | est. ms/request |", "|---|---:|---:|---:|"]
    for t in s["top_self"][:12]:
        lines.append(f"| `{t['function']}` | {t['calls_per_req']} | {t['pct']} % | {t.get('est_ms_per_req', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "wrap":
        sys.exit(wrap(sys.argv[2], sys.argv[3:]))
    print(__doc__)
    sys.exit(2)
