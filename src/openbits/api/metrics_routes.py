"""GET /v1/metrics: the Prometheus exposition, and the middleware that counts every API request.

An administrator scrapes every series; anyone else only the series of their own jobs (the
`uid` label), so the socket shows nobody another user's activity.
"""

from __future__ import annotations

import logging
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.metrics import Metrics, OwnSeries
from ..locations import split_host_port
from .request import SERVICE, Handler, caller

log = logging.getLogger("openbitsd")

METRICS = web.AppKey("metrics", Metrics)

metrics_routes = web.RouteTableDef()


@metrics_routes.get("/v1/metrics")
async def metrics(request: web.Request) -> web.Response:
    who = caller(request)
    registry = request.app[METRICS].registry
    body = generate_latest(registry if request.app[SERVICE].is_admin(who) else OwnSeries(registry, who.uid))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """openbits_api_requests_total by route template (not the path: a GUID each would be a series each)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        request.app[METRICS].count_request(name, request.method, status)


async def serve_tcp(listen: str, metrics: Metrics) -> web.AppRunner | None:
    """[metrics] listen: GET /metrics over TCP for a scraper (every series: restrict it with the address)."""
    if not listen:
        return None
    app = web.Application()

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = split_host_port(listen)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"openbitsd: [metrics] listen = {listen!r}: cannot listen there: "
                         f"{os.strerror(exc.errno) if exc.errno else exc}") from None
    log.info("metrics on http://%s/metrics", listen)
    return runner
