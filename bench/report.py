"""Re-render the Markdown table (and verdicts, profile summaries) of saved results:

    .venv/bin/python bench/report.py [--full] bench/results/crud-ferretdb-sqlite-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crud  # noqa: E402
import profile_server  # noqa: E402


def compact(r: dict) -> str:
    """One row per (op, clients): req/s and p50/p99 of every target, and server/raw ratios."""
    by = {(c["target"], c["op"], c["clients"]): c for c in r["cells"]}
    targets = list(dict.fromkeys(c["target"] for c in r["cells"]))
    servers = [t for t in targets if t.startswith("server")]
    head = ["op", "clients", *[f"{t} req/s (p50 / p99 ms)" for t in targets], *[f"{t} / raw" for t in servers]]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(targets) + len(servers))]
    for op in r["config"]["ops"]:
        for n in r["config"]["clients"]:
            row = [op, str(n)]
            for t in targets:
                c = by.get((t, op, n))
                row.append(f"{c['throughput']:.0f} ({c['p50_ms']:.0f} / {c['p99_ms']:.0f})" if c else "")
            raw = by.get(("raw", op, n))
            for t in servers:
                c = by.get((t, op, n))
                row.append(f"{100 * c['throughput'] / raw['throughput']:.0f} %" if c and raw and raw["throughput"]
                           else "")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cpu_table(r: dict) -> str:
    """CPU per operation (ms) of the application process and of the engine, median over client counts."""
    by: dict = {}
    for c in r["cells"]:
        if not c["requests"]:
            continue
        app = crud.cpu_ms_per_req(c, "server" if c["target"].startswith("server") else "self")
        eng = (crud.cpu_ms_per_req(c, "engine") or 0) + (crud.cpu_ms_per_req(c, "postgres") or 0)
        by.setdefault((c["op"], c["target"]), []).append((app, eng))
    targets = list(dict.fromkeys(c["target"] for c in r["cells"]))
    lines = ["| op | " + " | ".join(f"{t} app / engine" for t in targets) + " |",
             "|---|" + "---:|" * len(targets)]
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    for op in r["config"]["ops"]:
        row = [op]
        for t in targets:
            v = by.get((op, t))
            row.append(f"{med([a for a, _ in v]):.2f} / {med([e for _, e in v]):.1f}" if v else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        r = json.loads(Path(path).read_text())
        d = r.get("dataset", {})
        print(f"## {Path(path).name}\n")
        print(f"engine {r.get('engine')}, source {r['versions'].get('source')}, wall {r.get('wall_s')} s, "
              f"dataset {d.get('patients')} patients ({d.get('patients_via_api')} via the API, "
              f"{d.get('api_load_per_s')}/s), loadavg at start {r['machine'].get('loadavg_at_start')}\n")
        print(crud.markdown(r) if "--full" in sys.argv else compact(r))
        print()
        print(cpu_table(r))
        print()
        for v in r.get("verdicts", []):
            print(f"- {v['target']} {v['op']} @ {v['clients']}: p99 {v['p99_ms']} ms "
                  f"({'met' if v['p99_met'] else 'not met'}); ratio {v.get('ratio')} "
                  f"{'' if 'ratio_met' not in v else ('met' if v['ratio_met'] else 'not met')}")
        if r.get("wrk_check"):
            print(f"\nwrk cross-check: {r['wrk_check']}")
        for op, s in (r.get("profile") or {}).items():
            print()
            print(profile_server.render_markdown(op, s))
        print()


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--")])
