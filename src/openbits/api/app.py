"""The /v1 application: every route table, with the services the composition root built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..core.certificates import CertificateService
from ..core.deliveries import Deliveries
from ..core.metrics import Metrics
from ..core.service import JobService
from ..core.tokens import TokenService
from .event_routes import event_routes
from .job_routes import routes
from ..schema.views import RateExplainer
from .metrics_routes import METRICS, count_requests, metrics_routes
from .request import ABOUT, CERTIFICATES, DELIVERIES, MODE, ON_DEMAND, RATES, SERVICE, TOKENS, errors_middleware
from .token_routes import token_routes

#: every /v1 route (the OpenAPI document describes each: tests/test_api_schema.py)
ROUTE_TABLES = (routes, token_routes, event_routes, metrics_routes)


def make_app(service: JobService, tokens: TokenService, certificates: CertificateService, deliveries: Deliveries,
             rates: RateExplainer, mode: str, metrics: Metrics, about: Callable[[], dict[str, Any]],
             on_demand: bool = False) -> web.Application:
    """`about`: what the daemon tells of itself in /v1/status (socket, configuration, policies in force)."""
    app = web.Application(middlewares=[count_requests, errors_middleware], client_max_size=4 * 1024 * 1024)
    app[SERVICE], app[TOKENS], app[DELIVERIES], app[RATES], app[MODE] = service, tokens, deliveries, rates, mode
    app[METRICS], app[ABOUT], app[CERTIFICATES], app[ON_DEMAND] = metrics, about, certificates, on_demand
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app
