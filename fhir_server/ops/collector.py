"""The cyclic garbage collector, set for a server's latency once the app is built (issue 12).

Under a flood of large batch Bundles, CPython's full (generation 2) collections stopped the event
loop for 40–84 ms each, about twenty times in ten seconds: most of the read p99
under that flood (measured with a gc callback; bench/hostile.py). A full collection walks every
container object alive: the ~80,000 made at start-up (modules, fhir.resources models, pydantic
validators, the app) that live as long as the process, plus what requests hold. So:

- `gc.freeze()` after start-up moves those to the permanent generation, which no collection walks
  (https://docs.python.org/3/library/gc.html#gc.freeze): a full collection then takes a few ms.
- higher thresholds make collections rarer. Requests leave almost no cyclic garbage (the last
  source, a refused interaction's exception holding its own frame, is broken in rest/dispatch.py),
  so the cost is little memory held a little longer, and reference counting frees the rest at once.
"""

from __future__ import annotations

import gc

# allocations before a young collection; young collections before a middle one; middle ones
# before a full one (CPython's defaults: 700, 10, 10)
THRESHOLDS = (5000, 20, 100)


def settle() -> None:
    """Called once the app is built and before it serves: what exists now lives as long as the
    process and is never walked again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
