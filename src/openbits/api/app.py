"""The /v1 application: every route table, with the services the composition root built."""

from __future__ import annotations

from aiohttp import web

from ..core.deliveries import Deliveries
from ..core.service import JobService
from ..core.tokens import TokenService
from .event_routes import event_routes
from .job_routes import routes
from ..schema.views import RateExplainer
from .request import DELIVERIES, MODE, ON_DEMAND, RATES, SERVICE, TOKENS, errors_middleware
from .token_routes import token_routes


def make_app(service: JobService, tokens: TokenService, deliveries: Deliveries, rates: RateExplainer,
             mode: str, on_demand: bool = False) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=4 * 1024 * 1024)
    app[SERVICE], app[TOKENS], app[DELIVERIES], app[RATES], app[MODE] = service, tokens, deliveries, rates, mode
    app[ON_DEMAND] = on_demand
    for table in (routes, token_routes, event_routes):
        app.add_routes(table)
    return app
