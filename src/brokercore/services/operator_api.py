"""The operator's overview over REST on the query service:

    GET /api/v1/operator/overview      the operator role only (403 FORBIDDEN otherwise)

each shard's engine daemons, offsets and lag, every consumer's lag (what ``brokercore
status`` and the monitor read), and the reconciler's latest runs with their findings
(brokercore.read.operations). Kafka is asked in a worker thread, through one admin client
per process made on the first call; a Kafka that does not answer is named in the
answer's ``problems``, not an error: the stored findings still show.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from confluent_kafka import KafkaException
from starlette.requests import Request
from starlette.responses import Response

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.engine.instruments import load_instruments
from brokercore.kafka.daemon import LeaseMembers, lease_members
from brokercore.kafka.lag import KafkaLagProbe, PartitionLag
from brokercore.kafka.placement import shard_plan
from brokercore.read import operations
from brokercore.services.http import guarded, json_response, query_params, require_operator
from brokercore.services.monitor import platform_lags
from brokercore.services.query import QueryService, _read

__all__ = ["OPERATOR_ROUTES"]

Measured = tuple[dict[int, LeaseMembers], dict[str, list[PartitionLag]], list[str]]


class KafkaView:
    """A query process's view of the deployment's Kafka: the shard plan and a lag probe."""

    def __init__(self, settings: ServiceSettings, kafka: KafkaSettings):
        self.kafka, self.database_url = kafka, settings.database_url
        self.plan = shard_plan(kafka, load_instruments(settings.instruments))
        self.probe = KafkaLagProbe(kafka.bootstrap)

    def measure(self) -> Measured:
        """The lease groups' members, the lags and what could not be measured (blocks:
        call it in a thread). Kafka away is no exception: its readings are left out."""
        try:
            daemons = lease_members(self.probe.admin, self.kafka)
            lags, problems = platform_lags(self.kafka, self.database_url, self.probe)
        except (KafkaException, TimeoutError) as e:
            return {}, {}, [f"Kafka: {str(e) or 'no answer in time'}"]
        return daemons, lags, problems


def _kafka_view(request: Request, service: QueryService) -> KafkaView:
    view: KafkaView | None = getattr(request.app.state, "kafka_view", None)
    if view is None:
        view = request.app.state.kafka_view = KafkaView(service.settings, KafkaSettings.from_env())
    return view


@guarded
async def operator_overview(request: Request) -> Response:
    service: QueryService = request.app.state.query
    require_operator(await service.authorize(request))
    query_params(request)
    view = _kafka_view(request, service)
    (daemons, lags, problems), runs = await asyncio.gather(
        asyncio.to_thread(view.measure), service.read(operations.latest_runs)
    )
    return json_response(
        operations.overview(view.plan, daemons, lags, runs, problems, datetime.now(UTC))
    )


OPERATOR_ROUTES = [
    _read(
        "GET",
        "/api/v1/operator/overview",
        operator_overview,
        "The shards, every consumer's lag and the reconciler's latest findings (operators)",
        tag="operator",
        response=operations.Overview,
        errors={403: "FORBIDDEN (not an operator)"},
    )
]
