"""Logging and Prometheus metrics for every step, through one module.

Each step creates one ``StepTelemetry``; it owns a private ``CollectorRegistry`` so steps never leak
metrics into each other (and tests can read them back). Batch steps ``push()`` to a Pushgateway when
one is configured (``DKTO_PUSHGATEWAY`` or the ``pushgateway`` argument) under the grouping key
(pipeline, run_id, step); the long training step can also ``serve()`` ``/metrics`` for scraping.

Metric names follow Prometheus conventions: ``dkto_<step>_<what>_<unit>``, counters end in ``_total``.
The names each step emits are listed in ``k8s/monitoring/README.md``; the Grafana dashboard and the alert
rules beside it read those names. ``delete_run_groups`` removes every group of a run (clean-up).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# A counter's `_created` series (its creation time) means nothing for a pushed batch run and doubles the
# series count on the Pushgateway; it is off for every registry in the process.
disable_created_metrics()

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The Pushgateway job every step pushes under; groups below it are keyed by (pipeline, run_id, step).
PUSH_JOB = "dkto"
_METRIC_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


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
                self.pushgateway, job=PUSH_JOB, registry=self.registry, grouping_key=self.grouping_key()
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
            delete_from_gateway(self.pushgateway, job=PUSH_JOB, grouping_key=self.grouping_key())
            return True
        except Exception as err:
            self.log.warning("could not delete metrics group on %s: %s", self.pushgateway, err)
            return False

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` on a port (for the long training step); returns the server.

        Port 0 picks a free port (``server.server_port`` says which); ``server.shutdown()`` stops it.
        The ``dkto-trainer`` PodMonitor in ``k8s/monitoring/scrape.yaml`` scrapes ``<pod IP>:9090``
        (``ClusterSettings.train_metrics_port``).
        """
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server

    # -- helpers every step uses
    def record_stats(
        self,
        prefix: str,
        stats: Mapping[str, Any],
        *,
        label_names: Mapping[str, str] | None = None,
        documentation: str | None = None,
    ) -> int:
        """Set one gauge per number in a step's stats dict; returns how many values were recorded.

        ``record_stats("events", {"read": 10, "quarantined_by_reason": {"bad_uri": 2}},
        label_names={"quarantined_by_reason": "reason"})`` sets ``dkto_<step>_events_read`` = 10 and
        ``dkto_<step>_events_quarantined_by_reason{reason="bad_uri"}`` = 2. A nested mapping becomes one
        gauge whose label (``label_names[key]``, else ``key``) holds the inner key; nested mappings of
        mappings recurse with the prefix extended. Booleans record as 0/1. Strings, lists and None are
        not metrics and are skipped (logged at debug level, so the count tells what was kept).
        """
        label_names = label_names or {}
        recorded = 0
        for key, value in stats.items():
            name = _metric_name(f"{prefix}_{key}")
            if _is_number(value):
                doc = documentation or f"{key} from the {self.step} step's stats"
                self.gauge(name, doc).set(float(value))
                recorded += 1
            elif isinstance(value, Mapping) and value and all(_is_number(v) for v in value.values()):
                label = label_names.get(key, "key")
                doc = documentation or f"{key} from the {self.step} step's stats, by {label}"
                gauge = self.gauge(name, doc, (label,))
                for inner, number in value.items():
                    gauge.labels(**{label: str(inner)}).set(float(number))
                    recorded += 1
            elif isinstance(value, Mapping):
                recorded += self.record_stats(
                    name, value, label_names=label_names, documentation=documentation
                )
            else:
                self.log.debug("record_stats: %s.%s is %s, not a number; skipped", prefix, key, type(value))
        return recorded

    @contextmanager
    def track_run(self) -> Iterator[None]:
        """Time a step run: sets ``dkto_<step>_duration_seconds`` and, on success only,
        ``dkto_<step>_last_success_timestamp_seconds`` (the Prometheus docs' batch-job pattern).

        A failure also sets ``dkto_<step>_failed`` to 1 (0 on success) and re-raises.
        """
        started = time.monotonic()
        failed = self.gauge("failed", f"1 when the last {self.step} run failed, else 0")
        try:
            yield
        except BaseException:
            failed.set(1)
            raise
        else:
            failed.set(0)
            self.gauge(
                "last_success_timestamp_seconds", f"Unix time the {self.step} step last succeeded"
            ).set_to_current_time()
        finally:
            self.gauge("duration_seconds", f"Wall time of the {self.step} step run").set(
                time.monotonic() - started
            )


def _is_number(value: Any) -> bool:
    """True for ints, floats and bools that are finite (NaN and inf are not recorded as stats)."""
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _metric_name(raw: str) -> str:
    """A Prometheus-legal metric name part (``[a-zA-Z0-9_]``) from a stats key."""
    return _METRIC_NAME_CHARS.sub("_", raw).strip("_").lower()


def list_groups(pushgateway: str, timeout: float = 10.0) -> list[dict[str, str]]:
    """The grouping labels of every group on a Pushgateway (its ``/api/v1/metrics`` API)."""
    url = _gateway_url(pushgateway) + "/api/v1/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Pushgateway {pushgateway} answered {body.get('status')!r} on {url}")
    return [dict(group.get("labels", {})) for group in body.get("data", [])]


def delete_run_groups(
    pushgateway: str, run_id: str, *, pipeline: str | None = None, timeout: float = 10.0
) -> list[dict[str, str]]:
    """Delete every Pushgateway group of one run (all its steps); returns the groups deleted.

    Run clean-up calls this (the lead's ``dkto metrics cleanup --run-id``): the step list is read from the
    gateway, not assumed, so steps added later are cleaned up too. Only groups of the ``dkto`` job whose
    ``run_id`` (and ``pipeline``, when given) match are touched.
    """
    from prometheus_client import delete_from_gateway

    deleted = []
    for labels in list_groups(pushgateway, timeout=timeout):
        if labels.get("job") != PUSH_JOB or labels.get("run_id") != run_id:
            continue
        if pipeline is not None and labels.get("pipeline") != pipeline:
            continue
        grouping_key = {k: v for k, v in labels.items() if k != "job"}
        delete_from_gateway(pushgateway, job=PUSH_JOB, grouping_key=grouping_key, timeout=timeout)
        deleted.append(labels)
    return deleted


def _gateway_url(pushgateway: str) -> str:
    """``host:port`` or a URL, as prometheus_client accepts it, to a base URL without a trailing slash."""
    if "://" not in pushgateway:
        pushgateway = "http://" + pushgateway
    parsed = urllib.parse.urlsplit(pushgateway)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
