#!/usr/bin/env python3
"""Load the example DMP resources into a running FHIR server (standard library only).

    python examples/load.py                      # one create per resource, in dependency order
    python examples/load.py --transaction        # the whole set in one transaction Bundle
    python examples/load.py --validate           # only ask the server to $validate each file
    python examples/load.py --base http://host:8080/fhir

Each example file carries a local id (e.g. "Patient/example-emilie-lefevre") and refers to the
others by those ids. On create the server assigns its own ids, so before each POST the references
(`reference` elements and the DocumentReference's `attachment.url`) are rewritten to the ids the
server returned for the resources created before it.

Exit status: 0 when everything was created (or validated), 1 when the server refused something or
could not be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Dependency order: everything a resource refers to is created before it.
ORDER = [
    "organization.json",
    "practitioner.json",
    "practitioner-role.json",
    "patient.json",
    "binary.json",
    "document-reference.json",
]
BUNDLE = "transaction-bundle.json"
FHIR_JSON = "application/fhir+json"
REFERENCE_KEYS = ("reference", "url")  # Reference.reference, Attachment.url


class LoadError(Exception):
    pass


def request(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", FHIR_JSON)
    if data is not None:
        req.add_header("Content-Type", FHIR_JSON + "; charset=utf-8")
        req.add_header("Prefer", "return=representation")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers or {}), err.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise LoadError(f"cannot reach {url}: {reason} (is the server running? `make run`)") from None
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"text": raw[:200].decode("utf-8", "replace")}
    return status, headers, parsed


def outcome_text(body: dict) -> str:
    issues = body.get("issue") if isinstance(body, dict) else None
    if not issues:
        return json.dumps(body, ensure_ascii=False)[:300]
    return "; ".join(f"{i.get('severity')}: {i.get('diagnostics') or i.get('code')}" for i in issues)


def read_example(name: str, directory: Path) -> dict:
    with open(directory / name, encoding="utf-8") as fh:
        return json.load(fh)


def rewrite(node, mapping: dict[str, str]):
    """A copy of `node` with every reference found in `mapping` replaced."""
    if isinstance(node, dict):
        return {k: (mapping.get(v, v) if k in REFERENCE_KEYS and isinstance(v, str) else rewrite(v, mapping))
                for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite(item, mapping) for item in node]
    return node


def validate(base: str, directory: Path) -> int:
    failures = 0
    for name in ORDER:
        resource = read_example(name, directory)
        rtype = resource["resourceType"]
        status, _, body = request("POST", f"{base}/{rtype}/$validate", resource)
        errors = [i for i in body.get("issue", []) if i.get("severity") in ("error", "fatal")]
        if status != 200 or errors:
            failures += 1
            print(f"INVALID {name}: HTTP {status}: {outcome_text(body)}", file=sys.stderr)
        else:
            print(f"valid   {rtype:<18} {name}")
    return 1 if failures else 0


def load_each(base: str, directory: Path) -> int:
    mapping: dict[str, str] = {}  # "Patient/example-emilie-lefevre" -> "Patient/<server id>"
    for name in ORDER:
        resource = read_example(name, directory)
        rtype, local_id = resource["resourceType"], resource.get("id")
        body = rewrite({k: v for k, v in resource.items() if k != "id"}, mapping)
        status, headers, created = request("POST", f"{base}/{rtype}", body)
        if status != 201:
            raise LoadError(f"creating {rtype} from {name} failed: HTTP {status}: {outcome_text(created)}")
        new_id = created.get("id") or _id_from_location(headers.get("Location", ""), rtype)
        if not new_id:
            raise LoadError(f"the server did not say which id it gave the {rtype} from {name}")
        if local_id:
            mapping[f"{rtype}/{local_id}"] = f"{rtype}/{new_id}"
        print(f"created {rtype}/{new_id}  <- {name}")
    _print_summary(base, mapping)
    return 0


def load_transaction(base: str, directory: Path) -> int:
    bundle = read_example(BUNDLE, directory)
    status, _, body = request("POST", base, bundle, timeout=60)
    if status != 200 or body.get("type") != "transaction-response":
        raise LoadError(f"the transaction failed (nothing was applied): HTTP {status}: {outcome_text(body)}")
    for entry, result in zip(bundle["entry"], body.get("entry", [])):
        response = result.get("response", {})
        location = response.get("location", "")
        rtype = entry["resource"]["resourceType"]
        ref = f"{rtype}/{_id_from_location(location, rtype)}" if location else "?"
        print(f"created {ref}  <- {entry['fullUrl']} (HTTP {response.get('status')})")
    return 0


def _id_from_location(location: str, rtype: str) -> str | None:
    """The id in `.../Type/id/_history/n` (or `.../Type/id`)."""
    parts = location.rstrip("/").split("/")
    for i in range(len(parts) - 1):
        if parts[i] == rtype:
            return parts[i + 1]
    return None


def _print_summary(base: str, mapping: dict[str, str]) -> None:
    doc = next((v for k, v in mapping.items() if k.startswith("DocumentReference/")), None)
    binary = next((v for k, v in mapping.items() if k.startswith("Binary/")), None)
    if doc:
        print(f"document metadata: {base}/{doc}")
    if binary:
        print(f"document content:  {base}/{binary}  (send Accept: application/pdf for the PDF itself)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8080/fhir", help="FHIR base URL (default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--transaction", action="store_true",
                      help="post transaction-bundle.json instead (all or nothing)")
    mode.add_argument("--validate", action="store_true", help="only $validate each example; create nothing")
    parser.add_argument("--dir", type=Path, default=HERE, help="where the example files are (default: next to this script)")
    args = parser.parse_args(argv)
    base = args.base.rstrip("/")
    try:
        if args.validate:
            return validate(base, args.dir)
        if args.transaction:
            return load_transaction(base, args.dir)
        return load_each(base, args.dir)
    except LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
