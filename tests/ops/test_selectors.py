"""The k8s/ selectors match the pods the compiled pipeline makes, read from both sides so they cannot drift.

The pipeline's pods get their labels from ``pipelines/params.py`` (``ClusterSettings``) through
kfp-kubernetes; k8s/ selects them in NetworkPolicies (who may push to the Pushgateway, who Prometheus may
scrape) and in the trainer PodMonitor. This compiles the pipeline, builds each overlay, and evaluates the
policies and the monitor against the compiled pods' labels and metrics port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s import OVERLAYS, build, by_kind, pod_monitor_port

PUSHGATEWAY_PORT = 9091


def compiled_pipeline(tmp: Path) -> tuple[dict[str, dict[str, str]], int]:
    """Each executor's pod labels and the training task's metrics port, from the compiled YAML."""
    from pipelines.commands import compile_pipeline

    spec, platform = yaml.safe_load_all(compile_pipeline(tmp / "pipeline.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    labels = {
        name: executors.get(name, {}).get("podMetadata", {}).get("labels", {})
        for name in spec["deploymentSpec"]["executors"]
    }
    train_task = next(
        task
        for component in [spec["root"], *spec["components"].values()]
        for name, task in component.get("dag", {}).get("tasks", {}).items()
        if name == "train-model"
    )
    port = int(train_task["inputs"]["parameters"]["metrics_port"]["runtimeValue"]["constant"])
    return labels, port


@pytest.fixture(scope="module")
def pipeline_pods(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], int]:
    return compiled_pipeline(tmp_path_factory.mktemp("compiled"))


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only: k8s/ uses no other form) selects a pod's labels."""
    assert set(selector) <= {"matchLabels"}, f"selector form not evaluated here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def admits(
    policies: list[dict[str, Any]],
    target: dict[str, str],
    port: int,
    *,
    from_pod: dict[str, str] | None = None,
    from_namespace: dict[str, str] | None = None,
) -> bool:
    """Whether NetworkPolicies let a pod (``from_pod``, same namespace) or a namespace reach ``target``:``port``.

    Ingress policies add up: a pod no policy selects accepts everything; a selected pod accepts what any
    rule of a policy selecting it allows.
    """
    governing = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], target)
    ]
    if not governing:
        return True
    for policy in governing:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            if "from" not in rule:
                return True
            for peer in rule["from"]:
                pod_ok = "podSelector" not in peer or (
                    from_pod is not None and selects(peer["podSelector"], from_pod)
                )
                if "namespaceSelector" in peer:
                    ns_ok = from_namespace is not None and selects(peer["namespaceSelector"], from_namespace)
                else:
                    ns_ok = from_pod is not None  # no namespaceSelector: the policy's own namespace
                if pod_ok and ns_ok:
                    return True
    return False


def _pushgateway_pod(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (deployment,) = by_kind(objects, "Deployment")
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pipeline_pod_may_push_to_the_pushgateway(
    overlay: str, pipeline_pods: tuple[dict[str, dict[str, str]], int]
) -> None:
    objects = build(overlay)
    policies = by_kind(objects, "NetworkPolicy")
    pushgateway = _pushgateway_pod(objects)
    assert not admits(policies, pushgateway, PUSHGATEWAY_PORT, from_pod={"app": "someone-else"}), (
        "the policies admit any pod to the Pushgateway; this check would prove nothing"
    )
    labels, _ = pipeline_pods
    for executor, pod in labels.items():
        assert admits(policies, pushgateway, PUSHGATEWAY_PORT, from_pod=pod), (
            f"{overlay}: {executor}'s pod (labels {pod}) may not push to the Pushgateway"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_trainer_pod_and_only_it_is_scraped_on_its_metrics_port(
    overlay: str, pipeline_pods: tuple[dict[str, dict[str, str]], int]
) -> None:
    objects = build(overlay)
    (pod_monitor,) = by_kind(objects, "PodMonitor")
    labels, metrics_port = pipeline_pods
    scraped = {name for name, pod in labels.items() if selects(pod_monitor["spec"]["selector"], pod)}
    assert scraped == {"exec-train-model"}
    assert pod_monitor_port(pod_monitor) == metrics_port
    assert "namespaceSelector" not in pod_monitor["spec"], "the monitor must look in the pipeline's namespace"
    policies = by_kind(objects, "NetworkPolicy")
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    train_pod = labels["exec-train-model"]
    assert admits(policies, train_pod, metrics_port, from_namespace=monitoring)
    assert not admits(policies, train_pod, metrics_port, from_namespace={"kubernetes.io/metadata.name": "x"})
    assert admits(policies, _pushgateway_pod(objects), PUSHGATEWAY_PORT, from_namespace=monitoring)
