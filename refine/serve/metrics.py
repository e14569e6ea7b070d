"""Prometheus metrics of ``refine serve`` (``GET /metrics``).

The server's own series live in a registry of their own, rendered before the process-wide
default registry, which holds the process collectors and whatever vLLM registers there:

- ``refine_requests_total{endpoint, status}``: requests answered, by HTTP status;
- ``refine_requests_cancelled_total{endpoint}``: requests whose client went away first;
- ``refine_requests_in_flight``: requests being served now;
- ``refine_refinements_total``: refined choices; ``refine_accepted_edits_total``;
  ``refine_objective_gain_total`` (sum of objective gains); ``refine_forward_tokens_total``;
- ``refine_request_seconds{endpoint}`` and ``refine_refinement_seconds``: latency histograms;
- ``refine_refinements_running``: refinements in the thread pool now (at most ``--max-concurrent-refinements``);
- ``refine_engine_requests_outstanding``: engine requests of refinements' engine calls in progress;
- ``refine_engine_requests_aborted_total``: refinements' engine requests aborted by a deadline or a cancel.
"""

from __future__ import annotations

import math
from typing import Any

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class ServerMetrics:
    """The server's counters and histograms, and their text exposition."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("refine_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.cancelled = Counter("refine_requests_cancelled", "Requests whose client disconnected first",
                                 ["endpoint"], registry=r)
        self.in_flight = Gauge("refine_requests_in_flight", "Requests being served", registry=r)
        self.refinements = Counter("refine_refinements", "Refined choices", registry=r)
        self.edits = Counter("refine_accepted_edits", "Edits accepted by refinements", registry=r)
        self.gain = Counter("refine_objective_gain", "Sum of the objective gains of refinements", registry=r)
        self.forward_tokens = Counter("refine_forward_tokens", "Forward tokens spent by refinements", registry=r)
        self.latency = Histogram("refine_request_seconds", "Request latency", ["endpoint"], buckets=BUCKETS,
                                 registry=r)
        self.refinements_running = Gauge("refine_refinements_running", "Refinements running now", registry=r)
        self.engine_outstanding = Gauge("refine_engine_requests_outstanding",
                                        "Engine requests of refinements' engine calls in progress", registry=r)
        self.engine_aborted = Counter("refine_engine_requests_aborted",
                                      "Refinements' engine requests aborted by a deadline or a cancel", registry=r)
        self.refine_latency = Histogram("refine_refinement_seconds", "Wall time of one refinement",
                                        buckets=BUCKETS, registry=r)

    def observe_result(self, result: Any) -> None:
        """Count one :class:`~refine.types.RefineResult`."""
        self.refinements.inc()
        self.edits.inc(len(result.edits))
        if math.isfinite(result.gain):  # one odd objective must not turn the server's sum into NaN for good
            self.gain.inc(max(result.gain, 0.0))
        self.forward_tokens.inc(result.stats.forward_tokens)
        self.refine_latency.observe(result.stats.seconds)

    def render(self) -> bytes:
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(self.registry) + generate_latest(REGISTRY)
