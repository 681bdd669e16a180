"""GET /stats: the figures an operator's page or a script polls, as plain JSON numbers.

``connections`` and ``usersOnline`` as /metrics has them (this node's connections; users
present cluster-wide with --redis), and every ws_* and presence_* family of the daemon's
registry, read from the registry itself so a new family shows up here without a change:
a sample without labels is a number, one with labels a map by label value (nested in the
labels' order), a histogram ``{"count": N, "sum": S}``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from ..core import wire
from ..hub import PresenceHub
from .metrics import Metrics
from .web import Endpoint, json_response

PREFIXES = ("ws_", "presence_")
SKIPPED = ("_bucket", "_created", "_gsum", "_gcount")


def _put(out: dict[str, Any], keys: Iterable[str], leaf: str | None, value: float) -> None:
    *path, last = keys
    node = out
    for key in path:
        node = node.setdefault(key, {})
    if leaf is None:
        node[last] = value
    else:
        node.setdefault(last, {})[leaf] = value


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def families(registry: CollectorRegistry) -> dict[str, Any]:
    """The ws_* and presence_* samples of ``registry``, by sample name (histograms by
    family name); see the module's docstring for the shape."""
    out: dict[str, Any] = {}
    for family in registry.collect():
        if not family.name.startswith(PREFIXES):
            continue
        summed = family.type in ("histogram", "summary")
        for sample in family.samples:
            if sample.name.endswith(SKIPPED):
                continue
            leaf, name = None, sample.name
            if summed:
                leaf, name = sample.name.rpartition("_")[2], family.name
                if leaf not in ("count", "sum"):
                    continue
            value = float(sample.value)
            if value != value or value in (float("inf"), float("-inf")):
                continue  # NaN or infinite: not a JSON number
            _put(out, (name, *sample.labels.values()), leaf, _number(value))
    return out


class StatsPage(Endpoint):
    """Rendered on the reactor thread, like /metrics."""

    def __init__(self, metrics: Metrics, hub: PresenceHub, clock: IReactorTime) -> None:
        super().__init__()
        self.metrics, self.hub, self.clock = metrics, hub, clock

    def render_GET(self, request: Request) -> bytes:
        body = {
            "timestamp": wire.iso(self.clock.seconds()),
            "connections": self.hub.figures.connection_count,
            "usersOnline": self.hub.users_present(),
            "metrics": families(self.metrics.registry),
        }
        return json_response(request, 200, body)
