"""`fhir-server`: serve the API (starting the embedded engine when no MongoDB is configured),
print the resolved configuration, or write the published CapabilityStatement."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from fhir_server.config import Settings


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    engine = None
    if settings.mongodb_uri is None:
        from fhir_server.engine.ferretdb import EmbeddedFerretDB

        engine = EmbeddedFerretDB(settings.ferretdb_bin, settings.data_dir / "ferretdb", settings.ferretdb_port)
        os.environ["FHIR_MONGODB_URI"] = engine.start()
        print(f"embedded FerretDB (SQLite) on {engine.uri}, data in {settings.data_dir / 'ferretdb'}", file=sys.stderr)
    print("WARNING: no authentication is configured; anyone reaching this port has full access.", file=sys.stderr)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn them into a normal exit
    # so the `finally` below stops the embedded engine.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    try:
        where = {"fd": args.fd} if args.fd is not None else {"host": host, "port": port}
        uvicorn.run("fhir_server.rest.app:create_app", factory=True, workers=workers, log_level="warning",
                    access_log=False, lifespan="on", **where)
    finally:
        if engine is not None:
            engine.stop()
    return 0


def _check(args: argparse.Namespace) -> int:
    from pymongo import AsyncMongoClient

    from fhir_server.engine.capabilities import detect

    settings = Settings()
    out: dict = {"settings": settings.redacted()}
    if settings.mongodb_uri is None:
        out["engine"] = {"embedded": "ferretdb", "binary": str(settings.ferretdb_bin),
                         "binary_present": settings.ferretdb_bin.exists()}
    else:
        async def probe() -> dict:
            client = AsyncMongoClient(settings.mongodb_uri.get_secret_value(), serverSelectionTimeoutMS=5000)
            try:
                return (await detect(client, settings.database)).as_dict()
            finally:
                await client.close()

        try:
            out["engine"] = asyncio.run(probe())
        except Exception as exc:  # report, do not crash: `check` is a diagnostic
            out["engine"] = {"error": type(exc).__name__}
    print(json.dumps(out, indent=2, default=str))
    return 0


def _capabilities(args: argparse.Namespace) -> int:
    from fhir_server.rest.handlers.capabilities import capability_statement

    text = json.dumps(capability_statement(transactions=True), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the FHIR API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--fd", type=int, help="serve on an already-bound listening socket (socket activation)")
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check", help="print the resolved configuration (no secrets) and engine capabilities")
    check.set_defaults(func=_check)
    caps = sub.add_parser("capabilities", help="write the CapabilityStatement served on a MongoDB replica set")
    caps.add_argument("--out")
    caps.set_defaults(func=_capabilities)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
