"""Read and search of the server's published profiles (`StructureDefinition`, fhir/profiles.py).

They are static conformance resources, not patient data: any authenticated caller may read them
(the dispatcher asks no scope for these interactions), writes are 405 (rest/interaction.py), and
the whole list fits one page, so a search answers every match at once with its total.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fhir_server.fhir.profiles import CONTROL_PARAMS
from fhir_server.rest.context import RequestContext
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result


async def read(ctx: RequestContext, ix: Interaction) -> Result:
    return Result(status=200, resource=ctx.data.definition(ix.rtype, ix.rid))


async def search(ctx: RequestContext, ix: Interaction) -> Result:
    found = ctx.data.definitions(ix.rtype, ix.params)
    criteria = [(name, value) for name, value in ix.params if name not in CONTROL_PARAMS]
    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                    "link": [{"relation": "self",
                              "url": ctx.url(ix.rtype) + (f"?{urlencode(criteria)}" if criteria else "")}]}
    if found and ix.param("_summary") != "count":
        bundle["entry"] = [{"fullUrl": ctx.url(ix.rtype, sd["id"]), "resource": sd, "search": {"mode": "match"}}
                           for sd in found]
    return Result(status=200, resource=bundle)
