"""Admin: the server's Prometheus metrics (``GET /metrics``, text format 0.0.4).

On the API listener the admin token guards it; ``serve --metrics HOST:PORT`` also
answers it without a token on a listener of its own, for a Prometheus on a private
network (:mod:`punchd.metrics_http`). What each metric means: docs/metrics.md.
"""

from __future__ import annotations

from starlette.responses import Response

from ..metrics import CONTENT_TYPE
from .common import Call, Operation

METRICS = "/metrics"  # where Prometheus looks by default


async def metrics(call: Call) -> Response:
    return Response(await call.service.metrics.scrape(), media_type=CONTENT_TYPE)


OPERATIONS = [
    Operation("GET", METRICS, "Prometheus metrics (text format 0.0.4)", "admin", metrics,
              response=str, media="text/plain"),
]
