"""`GET /metrics`: the process's Prometheus registry (btsguru.metrics) in text format.

Before rendering, the scrape-time gauges are refreshed from the services' state. When
`METRICS_TOKEN` is set the scraper must send `Authorization: Bearer TOKEN`; otherwise
the answer is the contract's JSON 401.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from btsguru import metrics
from btsguru.errors import Unauthorized
from btsguru.handlers.base import JsonHandler

if TYPE_CHECKING:
    from btsguru.app import Services


class MetricsHandler(JsonHandler):
    def initialize(self, services: Services) -> None:
        self.services = services

    def prepare(self) -> None:
        token = self.services.config.metrics_token.reveal()
        if not token:
            return
        scheme, _, given = self.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
            raise Unauthorized("/metrics needs Authorization: Bearer METRICS_TOKEN")

    async def get(self) -> None:
        await metrics.collect_state(self.services)
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(metrics.render())
