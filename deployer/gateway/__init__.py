"""The gateway: nginx in front of every service, owned by deployer.

``routes`` checks the route table, ``render`` turns it into nginx config from the operator's
templates, ``embedded`` runs deployer's own nginx (``external`` drives the operator's),
``gateway`` applies a table and confirms it live, ``traffic`` reads the access log.
Code outside this package imports from here only.
"""

from deployer.errors import GatewayError, GatewayRejected, GatewayUnavailable
from deployer.gateway.gateway import CONFIRM_SECONDS, Gateway, GatewayConfig, NginxGateway, build_gateway
from deployer.gateway.render import generation_of
from deployer.gateway.routes import LOOPBACK, MARKER_PATH, Route, RouteTable, Upstream, check_routes
from deployer.gateway.traffic import TrafficReader
from deployer.model.traffic import LATENCY_BOUNDS, RevisionTraffic, quantile

__all__ = [
    "CONFIRM_SECONDS",
    "LATENCY_BOUNDS",
    "LOOPBACK",
    "MARKER_PATH",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewayRejected",
    "GatewayUnavailable",
    "NginxGateway",
    "RevisionTraffic",
    "Route",
    "RouteTable",
    "TrafficReader",
    "Upstream",
    "build_gateway",
    "check_routes",
    "generation_of",
    "quantile",
]
