"""Logging and Prometheus metrics for every step, through one module.

Each step creates one ``StepTelemetry``; it owns a private ``CollectorRegistry`` so steps never leak
metrics into each other (and tests can read them back). Batch steps ``push()`` to a Pushgateway when
one is configured (``DKTO_PUSHGATEWAY`` or the ``pushgateway`` argument) under the grouping key
(pipeline, run_id, step); the long training step can also ``serve()`` ``/metrics`` for scraping.

Metric names follow Prometheus conventions: ``dkto_<step>_<what>_<unit>``, counters end in ``_total``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """The project's logger (``dkto.<name>``), configured once to write to stderr."""
    root = logging.getLogger("dkto")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(os.environ.get("DKTO_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return root.getChild(name)


class StepTelemetry:
    """Metrics of one step run: define, update, push to a Pushgateway, or serve for scraping."""

    def __init__(
        self,
        step: str,
        *,
        run_id: str | None = None,
        pipeline: str = "diffusion-kto-retrain",
        pushgateway: str | None = None,
    ) -> None:
        self.step = step
        self.run_id = run_id or os.environ.get("DKTO_RUN_ID", "local")
        self.pipeline = pipeline
        self.pushgateway = (
            pushgateway if pushgateway is not None else os.environ.get("DKTO_PUSHGATEWAY") or None
        )
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        self.log = get_logger(step)

    # -- definition (idempotent: asking twice for a name returns the same metric)
    def _get(self, cls: type, name: str, documentation: str, labels: tuple[str, ...], **kw: Any) -> Any:
        full = f"dkto_{self.step}_{name}"
        metric = self._metrics.get(full)
        if metric is None:
            metric = cls(full, documentation, labelnames=labels, registry=self.registry, **kw)
            self._metrics[full] = metric
        return metric

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter ``dkto_<step>_<name>``; ``name`` must end in ``_total``."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total (Prometheus convention)")
        # prometheus_client appends _total itself.
        return self._get(Counter, name[: -len("_total")], documentation, labels)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        """A gauge ``dkto_<step>_<name>`` (put the unit in the name: ``_seconds``, ``_bytes``)."""
        return self._get(Gauge, name, documentation, labels)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] | None = None,
    ) -> Histogram:
        """A histogram ``dkto_<step>_<name>``."""
        kw = {"buckets": buckets} if buckets else {}
        return self._get(Histogram, name, documentation, labels, **kw)

    # -- export
    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)

    def grouping_key(self) -> dict[str, str]:
        """Pushgateway grouping key: one group per (pipeline, run, step)."""
        return {"pipeline": self.pipeline, "run_id": self.run_id, "step": self.step}

    def push(self) -> bool:
        """Push to the Pushgateway if one is configured; a push failure is logged, never fatal."""
        if not self.pushgateway:
            return False
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(
                self.pushgateway, job="dkto", registry=self.registry, grouping_key=self.grouping_key()
            )
            return True
        except Exception as err:  # metrics must never fail a training run
            self.log.warning("could not push metrics to %s: %s", self.pushgateway, err)
            return False

    def delete(self) -> bool:
        """Delete this run's group from the Pushgateway (run clean-up)."""
        if not self.pushgateway:
            return False
        from prometheus_client import delete_from_gateway

        try:
            delete_from_gateway(self.pushgateway, job="dkto", grouping_key=self.grouping_key())
            return True
        except Exception as err:
            self.log.warning("could not delete metrics group on %s: %s", self.pushgateway, err)
            return False

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` on a port (for the long training step); returns the server."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
