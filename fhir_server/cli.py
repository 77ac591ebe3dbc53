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
from typing import Any

from fhir_server.config import Settings


def _tcp_nodelay(fd: int) -> None:
    """uvicorn wraps an inherited fd as a Unix socket and so never sets TCP_NODELAY; without it every
    response on an inherited TCP socket waits ~40 ms for Nagle/delayed ACK. Accepted sockets inherit
    the option from the listening socket on Linux."""
    import socket

    sock = socket.socket(fileno=fd)
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.detach()


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def uvicorn_options(settings: Settings) -> dict:
    """Connection hardening and proxy trust for uvicorn (README "Hardening / deployment")."""
    proxies = settings.trusted_proxies.strip()
    return {
        # X-Forwarded-For/-Proto are believed only from the configured proxies (none by default):
        # otherwise any peer could pick the address the throttles count under
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or "",
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "limit_concurrency": settings.limit_concurrency,
        "http": "fhir_server.ops.connections:GuardedHttpToolsProtocol",  # + a header read timeout
        **_tls(settings),
    }


def _tls(settings: Settings) -> dict:
    """HTTPS served by uvicorn itself, for deployments without a TLS-terminating proxy."""
    if settings.ssl_certfile is None:
        return {}
    out: dict = {"ssl_certfile": str(settings.ssl_certfile)}
    if settings.ssl_keyfile is not None:
        out["ssl_keyfile"] = str(settings.ssl_keyfile)
    if settings.ssl_keyfile_password is not None:
        out["ssl_keyfile_password"] = settings.ssl_keyfile_password.get_secret_value()
    return out


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    engine, lock = None, None
    if settings.mongodb_uri is None:
        from fhir_server.engine.datadir import DataDirLock

        lock = DataDirLock(settings.data_dir)
        if not lock.acquire():
            print(f"error: {lock.describe_holder()}; one data directory is served by one server at a time "
                  "(stop it, or set FHIR_DATA_DIR)", file=sys.stderr)
            return 2
        engine = _embedded(settings)
        try:
            os.environ["FHIR_MONGODB_URI"] = engine.start()
        except BaseException:
            lock.release()
            raise
        lock.publish(engine.uri, "server")
        print(f"embedded {engine.describe()} on {engine.uri}, data in {settings.data_dir}", file=sys.stderr)
    if settings.insecure_dev_mode:
        bar = "!" * 78
        print(f"{bar}\nWARNING: INSECURE DEV MODE (FHIR_INSECURE_DEV_MODE=true): requests WITHOUT an access token get\n"
              f"FULL ACCESS to every patient's record. Development only; never expose this server.\n{bar}",
              file=sys.stderr)
    # The workers share the consent epoch in memory (access/epoch.py) when this server is the only one
    # writing its database: the embedded engine, or FHIR_CONSENT_CACHE=host.
    from fhir_server.access.epoch import ENV_FILE, create_host_file

    epoch_file = None
    if settings.consent_cache == "host" or (settings.consent_cache == "auto" and engine is not None):
        epoch_file = create_host_file()
        os.environ[ENV_FILE] = epoch_file
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn them into a normal exit
    # so the `finally` below stops the embedded engine.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    try:
        if args.fd is not None:
            _tcp_nodelay(args.fd)
        where = {"fd": args.fd} if args.fd is not None else {"host": host, "port": port}
        from fhir_server.ops.observability import configure_logging

        configure_logging(settings.log_level)  # log_config=None: uvicorn's loggers keep our JSON handler
        uvicorn.run("fhir_server.rest.app:create_app", factory=True, workers=workers, log_level="warning",
                    log_config=None, access_log=False, lifespan="on", **where, **uvicorn_options(settings))
    finally:
        if epoch_file is not None:
            Path(epoch_file).unlink(missing_ok=True)
        if engine is not None:
            engine.stop()
        if lock is not None:
            lock.release()
    return 0


def _check(args: argparse.Namespace) -> int:
    from pymongo import AsyncMongoClient

    from fhir_server.engine.capabilities import detect

    settings = Settings()
    out: dict = {"settings": settings.redacted()}
    if settings.mongodb_uri is None:
        from fhir_server.engine.datadir import DataDirLock

        lock = DataDirLock(settings.data_dir)
        free = lock.acquire()
        holder = None if free else lock.holder()
        lock.release()
        out["engine"] = {"embedded": "ferretdb", "binary": str(settings.ferretdb_bin),
                         "binary_present": settings.ferretdb_bin.exists(),
                         "served_by": {"pid": holder.get("pid"), "role": holder.get("role")} if holder else None}
    else:
        mongodb_uri = settings.mongodb_uri

        async def probe() -> dict:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri.get_secret_value(),
                                                                        serverSelectionTimeoutMS=5000)
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
    from fhir_server.fhir.profiles import Profiles
    from fhir_server.rest.handlers.capabilities import capability_statement

    profiles = Profiles.load(Settings().profiles_dir)
    text = json.dumps(capability_statement(transactions=True, supported_profiles=profiles.supported), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _embedded(settings: Settings):
    """The embedded engine of `settings.data_dir` (not started)."""
    from fhir_server.engine.embedded import EmbeddedEngine

    return EmbeddedEngine(settings.ferretdb_bin, settings.data_dir, settings.ferretdb_port, settings.embedded_backend)


def _with_db(work) -> int:
    """Run `work(db)` against the configured database: FHIR_MONGODB_URI, else the embedded engine of
    the data directory — the running server's when one serves it, else one started for this command
    (docs: fhir_server/engine/datadir.py)."""
    from pymongo import AsyncMongoClient

    from fhir_server.engine.datadir import DataDirLock

    settings = Settings()
    engine, lock = None, None
    uri = settings.mongodb_uri.get_secret_value() if settings.mongodb_uri else None
    if uri is None:
        lock = DataDirLock(settings.data_dir)
        if lock.acquire():
            engine = _embedded(settings)
            try:
                uri = engine.start()
            except BaseException:
                lock.release()
                raise
            lock.publish(uri, "cli")
        else:
            holder = lock.holder()
            if holder is None or holder.get("role") != "server":
                lock = None
                raise RuntimeError(DataDirLock(settings.data_dir).describe_holder() + "; try again when it ends")
            uri, lock = holder["uri"], None  # the running server's engine

    async def run() -> int:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10000)
        try:
            return await work(client[settings.database])
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if engine is not None:
            engine.stop()
        if lock is not None:
            lock.release()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("error: the passwords differ")
    return first


def _users(args: argparse.Namespace) -> int:
    from fhir_server.auth.stores import MongoUserDirectory, StateStore, User, disable_revocation_until

    password = _read_password(args) if args.action == "add" else None

    async def work(db) -> int:
        users = MongoUserDirectory(db)
        if args.action == "add":
            assert password is not None  # read above for "add"
            await users.add(User(args.username, args.role, args.fhir_user, args.name or "", args.rpps,
                                 break_glass=args.break_glass), password)
            print(f"added {args.role} {args.username}")
        elif args.action == "list":
            for u in await users.list():
                print(json.dumps({"username": u.username, "role": u.role, "fhir_user": u.fhir_user, "name": u.name,
                                  "rpps": u.rpps, "disabled": u.disabled, "break_glass": u.break_glass}))
        else:
            if not await users.set_disabled(args.username, args.action == "disable"):
                print(f"error: no user '{args.username}'", file=sys.stderr)
                return 1
            if args.action == "disable":  # and every token they hold stops working
                await StateStore(db).revoke_user(args.username, disable_revocation_until(Settings()))
            print(f"{args.action}d {args.username}")
        return 0

    return _with_db(work)


def _clients(args: argparse.Namespace) -> int:
    import secrets

    from fhir_server.auth.stores import Client, MongoClientRegistry

    async def work(db) -> int:
        clients = MongoClientRegistry(db)
        if args.action == "add":
            jwks = json.loads(Path(args.jwks).read_text()) if args.jwks else None  # noqa: ASYNC240 (a CLI, no loop to stall)
            secret = args.secret
            if args.kind == "confidential-symmetric" and not secret:
                secret = secrets.token_urlsafe(32)
                print(f"client secret (shown once): {secret}")
            await clients.add(Client(args.client_id, args.kind, args.name or args.client_id, args.redirect_uri or [],
                                     (args.scope or "").split(), None, jwks, args.jwks_uri,
                                     organization=args.organization, operator=args.operator), secret)
            print(f"added {args.kind} client {args.client_id}")
        elif args.action == "list":
            for c in await clients.list():
                print(json.dumps({"client_id": c.client_id, "kind": c.kind, "name": c.name,
                                  "redirect_uris": c.redirect_uris, "scopes": " ".join(c.scopes),
                                  "jwks": bool(c.jwks), "jwks_uri": c.jwks_uri, "organization": c.organization,
                                  "operator": c.operator}))
        else:
            if not await clients.remove(args.client_id):
                print(f"error: no client '{args.client_id}'", file=sys.stderr)
                return 1
            print(f"removed {args.client_id}")
        return 0

    return _with_db(work)


def _launch(args: argparse.Namespace) -> int:
    from fhir_server.auth.stores import StateStore

    async def work(db) -> int:
        ctx = {"patient": args.patient, **({"encounter": args.encounter} if args.encounter else {})}
        print(await StateStore(db).put_launch(ctx, args.lifetime))
        return 0

    return _with_db(work)


def _reindex(args: argparse.Namespace) -> int:
    """Recompute search index fields and create missing indexes (after search definitions change)."""
    from fhir_server import composition

    types = tuple(args.type) if args.type else composition.SUPPORTED_TYPES

    async def work(db) -> int:
        repo = composition.repository(db.client, db)
        await repo.ensure_indexes()
        conflicts: list[str] = []
        for rtype in types:
            print(f"{rtype}: {await repo.reindex(rtype, conflicts=conflicts)} documents reindexed")
        for line in conflicts:  # e.g. two Patients written with one INS before it was enforced
            print(f"conflict: {line}", file=sys.stderr)
        return 1 if conflicts else 0

    return _with_db(work)


def _records(args: argparse.Namespace) -> int:
    """Administrators' retention tools: list closed records and destructions, run the due ones."""
    from fhir_server import composition
    from fhir_server.records.destruction import CLI_AGENT
    from fhir_server.storage.documents import fhir_instant, now_ms

    settings = Settings()

    async def work(db) -> int:
        destroyer, trail = await composition.destroyer_for_cli(settings, db)
        try:
            if args.action == "list":
                pending = {j["patient"] for j in await destroyer.jobs() if j.get("state") != "done"}
                now = now_ms()
                for c in await destroyer.closed_records():
                    assert c.closed_since is not None and c.grace_end is not None
                    print(json.dumps({"patient": c.patient, "closed_since": fhir_instant(c.closed_since),
                                      "grace_end": fhir_instant(c.grace_end),
                                      "destruction": "pending" if c.patient in pending
                                      else "due" if c.grace_end <= now else "waiting"}))
                for j in await destroyer.jobs():
                    if j.get("state") == "done":  # the patient is no longer named: the receipt does
                        print(json.dumps({"destruction": "done", "job": j["_id"], "at": fhir_instant(j["done"]),
                                          "receipt": f"AuditEvent/{j['receipt_id']}", "counts": j.get("counts")}))
                return 0
            done = await destroyer.resume()
            done += await destroyer.destroy_due(CLI_AGENT)
            for j in done:
                print(json.dumps({"destruction": "done", "job": j["_id"], "receipt": f"AuditEvent/{j['receipt_id']}",
                                  "counts": j.get("counts")}))
            return 0
        finally:
            await trail.close()

    return _with_db(work)


def _audit(args: argparse.Namespace) -> int:
    """`audit purge`: apply the audit retention (FHIR_AUDIT_RETENTION_DAYS). Unset, audit is kept
    forever and nothing is deleted. Deleted records leave a checkpoint that `AuditEvent/$verify`
    accepts (records/trail.py), recorded in an AuditEvent of its own."""
    from datetime import UTC, datetime, timedelta

    from fhir_server import composition
    from fhir_server.records.trail import AuditTrail, purge

    settings = Settings()
    days = settings.audit_retention_days
    if days is None:
        print("audit retention is forever (FHIR_AUDIT_RETENTION_DAYS is not set): nothing purged")
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=days)

    async def work(db) -> int:
        repo = composition.repository(db.client, db)
        trail = AuditTrail(repo)
        await trail.ensure_indexes()
        plan = await purge(trail, cutoff, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"audit records older than {days} days: {verb} {sum(plan.values())} in {len(plan)} chain(s)")
        return 0

    return _with_db(work)


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

    users = sub.add_parser("users", help="the built-in user directory").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", help="add a patient, professional or administrator account")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=["patient", "practitioner", "admin"])
    add.add_argument("--fhir-user", help="Patient/<id> for a patient, Practitioner/<id> for a professional")
    add.add_argument("--rpps", help="a professional's 11-digit RPPS number (Luhn-checked)")
    add.add_argument("--break-glass", action="store_true",
                     help="a professional allowed to declare emergency access (purpose of use BTG)")
    add.add_argument("--name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    users.add_parser("list", help="list accounts (never passwords)")
    for action in ("disable", "enable"):
        users.add_parser(action).add_argument("username")
    for p in users.choices.values():
        p.set_defaults(func=_users)

    clients = sub.add_parser("clients", help="registered SMART apps and backend services").add_subparsers(
        dest="action", required=True)
    cadd = clients.add_parser("add", help="register an app (public/confidential) or a backend service")
    cadd.add_argument("client_id")
    cadd.add_argument("--kind", required=True,
                      choices=["public", "confidential-symmetric", "confidential-asymmetric"])
    cadd.add_argument("--name")
    cadd.add_argument("--redirect-uri", action="append", help="exact redirect URI (repeatable)")
    cadd.add_argument("--scope", help="space-separated scopes the client may be granted, e.g. "
                                      "'openid fhirUser launch/patient offline_access patient/*.rs'")
    cadd.add_argument("--secret", help="confidential-symmetric: the secret, at least 32 random characters "
                      "(drawn and shown once if omitted)")
    cadd.add_argument("--jwks", help="confidential-asymmetric: a file holding the client's public JWKS")
    cadd.add_argument("--jwks-uri", help="confidential-asymmetric: the URL of the client's JWKS")
    cadd.add_argument("--organization", help="Organization/<id> a backend client acts for: patient consent applies "
                                             "to it as to that organization's professionals")
    cadd.add_argument("--operator", action="store_true",
                      help="an operator service, not bound by patient consent (every access audited)")
    clients.add_parser("list")
    clients.add_parser("remove").add_argument("client_id")
    for p in clients.choices.values():
        p.set_defaults(func=_clients)

    launch = sub.add_parser("launch", help="create an EHR launch context and print its launch id")
    launch.add_argument("--patient", required=True)
    launch.add_argument("--encounter")
    launch.add_argument("--lifetime", type=int, default=3600, help="seconds")
    launch.set_defaults(func=_launch)
    reindex = sub.add_parser("reindex", help="recompute search index fields (after search definitions change)")
    reindex.add_argument("--type", action="append", help="only this resource type (repeatable)")
    reindex.set_defaults(func=_reindex)
    records = sub.add_parser("records", help="retention: closed records and their destruction").add_subparsers(
        dest="action", required=True)
    records.add_parser("list", help="closed records (closed since, grace end, destruction waiting/due/pending) and "
                                    "finished destructions")
    records.add_parser("destroy-due", help="finish interrupted destructions, then destroy every closed record whose "
                                           "grace period has ended")
    for p in records.choices.values():
        p.set_defaults(func=_records)


    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="action", required=True)
    apurge = audit.add_parser("purge", help="delete AuditEvents older than FHIR_AUDIT_RETENTION_DAYS (unset: none)")
    apurge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    apurge.set_defaults(func=_audit)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback (nor anything past the first line)
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(f"error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
