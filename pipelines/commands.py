"""The pipeline's ``dkto`` commands: compile, run locally, submit to Kubeflow Pipelines, schedule.

- ``dkto compile --out pipeline.yaml``: the pipeline as KFP IR YAML (upload it in the KFP UI).
- ``dkto run --local --config FILE``: the whole DAG on this machine with ``kfp.local``'s
  SubprocessRunner (no Kubernetes, no Docker), outputs under a local root, the registry on SQLite.
- ``dkto submit --host URL --config FILE [--experiment NAME]``: one run on a KFP cluster.
- ``dkto schedule --cron "0 0 3 * * *" --host URL --config FILE``: a recurring run, never two at once.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import typer

from components.shared.config import ConfigError
from pipelines.params import (
    CLUSTER_PUSHGATEWAY,
    CLUSTER_SERVICE_ACCOUNT,
    ClusterSettings,
    PipelineParams,
    load_params,
    validate_cron,
)

LOCAL_RUNS_DIR = "kfp-local"


def compile_pipeline(out: str | Path, settings: ClusterSettings | None = None) -> Path:
    """Compile the pipeline (with ``settings`` in its pods) to KFP IR YAML at ``out``."""
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), str(out))
    return out


def _local_path(value: str) -> str:
    """An absolute local path (kfp.local runs each task as a subprocess; relative paths must not drift)."""
    return str(Path(value).expanduser().resolve())


def localize(params: PipelineParams) -> PipelineParams:
    """The params with local roots and the SQLite registry made absolute, for a local run."""
    from components.shared import storage

    updates: dict[str, Any] = {}
    for name in ("outputs_root", "checkpoint_root", "registry_artifact_root"):
        value = getattr(params, name)
        if value and not storage.is_gcs(value):
            updates[name] = _local_path(value)
    if params.registry_uri.startswith("sqlite:///"):
        db = Path(params.registry_uri[len("sqlite:///") :])
        db = db if db.is_absolute() else Path(_local_path(str(db)))
        db.parent.mkdir(parents=True, exist_ok=True)
        updates["registry_uri"] = f"sqlite:///{db}"
    return params.model_copy(update=updates)


def run_local(params: PipelineParams, *, pipeline_root: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline on this machine; return the run's summary (the exit handler's record).

    Raises ``RuntimeError`` when a task failed; the exit handler has written the summary by then.
    """
    from kfp import local

    from components.shared import storage
    from pipelines.pipeline import build_pipeline

    params = localize(params)
    if storage.is_gcs(params.outputs_root):
        raise ConfigError("dkto run --local: outputs_root must be a local directory, not gs://")
    root = pipeline_root or str(Path(params.outputs_root) / LOCAL_RUNS_DIR)
    Path(root).mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).timestamp()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
    error: Exception | None = None
    try:
        # No fixed metrics port on a laptop: two local runs at once would fight over 9090.
        build_pipeline(ClusterSettings.local())(**params.pipeline_arguments())
    except RuntimeError as err:
        error = err
    summary = latest_summary(params.outputs_root, since=started)
    if error is not None:
        raise RuntimeError(f"{error} (run summary: {summary.get('summary_uri', 'none written')})") from error
    return summary


def latest_summary(outputs_root: str, *, since: float = 0.0) -> dict[str, Any]:
    """The newest ``runs/*/summary.json`` under a local outputs root written after ``since`` (Unix time)."""
    candidates = [p for p in Path(outputs_root).glob("runs/*/summary.json") if p.stat().st_mtime >= since]
    if not candidates:
        return {}
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    summary = json.loads(newest.read_text())
    summary["summary_uri"] = str(newest)
    return summary


def cluster_arguments(params: PipelineParams, pushgateway: str | None = None) -> dict[str, Any]:
    """The run arguments ``dkto submit``/``dkto schedule`` send: the params, pushing to k8s/'s Pushgateway.

    ``pushgateway`` (the ``--pushgateway`` option) wins; else a ``pushgateway`` the parameter file or
    ``--set`` gave (even empty: push nothing); else ``CLUSTER_PUSHGATEWAY``.
    """
    params.check_for_cluster()
    arguments = params.pipeline_arguments()
    if pushgateway is not None:
        arguments["pushgateway"] = pushgateway
    elif "pushgateway" not in params.model_fields_set:
        arguments["pushgateway"] = CLUSTER_PUSHGATEWAY
    return arguments


def _recurring_runs_named(client: Any, experiment_id: str, name: str) -> list[str]:
    """Ids of the experiment's recurring runs whose display name is ``name`` (every page)."""
    found: list[str] = []
    token = ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, page_token=token, page_size=100)
        found += [r.recurring_run_id for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return found


def _service_account(value: str) -> str | None:
    """``--service-account ""`` leaves the pods on KFP's default service account."""
    return value or None


def _client(host: str, namespace: str | None) -> Any:
    """A ``kfp.Client`` for ``host`` (credentials come from the environment: kubeconfig, a token, IAP)."""
    import kfp

    return kfp.Client(host=host, namespace=namespace) if namespace else kfp.Client(host=host)


def _compiled_package(settings_file: str | None) -> str:
    """Compile the pipeline with the cluster settings (``--cluster FILE`` or the defaults) to a temp file."""
    import tempfile

    settings = ClusterSettings.from_yaml(settings_file)
    out = Path(tempfile.mkdtemp(prefix="dkto-")) / "pipeline.yaml"
    return str(compile_pipeline(out, settings))


def register(app: typer.Typer) -> None:
    """Add ``compile``, ``run``, ``submit`` and ``schedule`` to the ``dkto`` app."""

    @app.command("compile")
    def compile_command(
        out: Path = typer.Option(Path("pipeline.yaml"), "--out", help="Where to write the pipeline YAML."),
        cluster: str | None = typer.Option(
            None, "--cluster", help="ClusterSettings YAML (GPU type, node pool, sizes); default: built-in."
        ),
    ) -> None:
        """Compile the diffusion-kto-retrain pipeline to KFP YAML (upload it in the KFP UI)."""
        path = compile_pipeline(out, ClusterSettings.from_yaml(cluster))
        typer.echo(f"compiled diffusion-kto-retrain -> {path}")

    @app.command("run")
    def run_command(
        config: str | None = typer.Option(None, "--config", help="PipelineParams YAML (local or gs://)."),
        overrides: list[str] = typer.Option(
            [], "--set", help="Override a parameter: key=value (repeatable)."
        ),
        local: bool = typer.Option(
            False, "--local", help="Run on this machine with kfp.local (the only mode of `run`)."
        ),
    ) -> None:
        """Run the whole pipeline on this machine (kfp.local, SQLite registry, local outputs)."""
        if not local:
            raise typer.BadParameter(
                "`dkto run` runs locally only: add --local (use `dkto submit` for a cluster)"
            )
        params = load_params(config, overrides)
        try:
            summary = run_local(params)
        except RuntimeError as err:
            typer.echo(f"run FAILED: {err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(
            f"run {summary.get('run_id')} {summary.get('state')}: gate passed={summary.get('gate_passed')}, "
            f"registered version={summary.get('registered_version')}, promoted={summary.get('promoted')}"
        )
        typer.echo(f"summary: {summary.get('summary_uri')}")

    @app.command("submit")
    def submit_command(
        host: str = typer.Option(
            ..., "--host", help="KFP API endpoint, e.g. https://kfp.example.com/pipeline."
        ),
        config: str | None = typer.Option(None, "--config", help="PipelineParams YAML (local or gs://)."),
        overrides: list[str] = typer.Option(
            [], "--set", help="Override a parameter: key=value (repeatable)."
        ),
        experiment: str = typer.Option("diffusion-kto", "--experiment", help="KFP experiment name."),
        run_name: str | None = typer.Option(None, "--run-name", help="Run name (default: timestamped)."),
        namespace: str | None = typer.Option(None, "--namespace", help="Kubeflow profile namespace."),
        cluster: str | None = typer.Option(None, "--cluster", help="ClusterSettings YAML."),
        service_account: str = typer.Option(
            CLUSTER_SERVICE_ACCOUNT,
            "--service-account",
            help="Kubernetes service account of the pods (workload identity; k8s/ creates it); "
            '"" for KFP\'s default.',
        ),
        pushgateway: str | None = typer.Option(
            None,
            "--pushgateway",
            help=f"Pushgateway the steps push to (default: the params' pushgateway if set, else "
            f'{CLUSTER_PUSHGATEWAY}); "" pushes nothing.',
        ),
    ) -> None:
        """Submit one run of the pipeline to a Kubeflow Pipelines cluster."""
        params = load_params(config, overrides)
        # Checked before the client exists: kfp.Client contacts the host (healthz) as it is made.
        arguments = cluster_arguments(params, pushgateway)
        package = _compiled_package(cluster)
        client = _client(host, namespace)
        result = client.create_run_from_pipeline_package(
            package,
            arguments=arguments,
            run_name=run_name or f"diffusion-kto-retrain-{dt.datetime.now():%Y%m%d-%H%M%S}",
            experiment_name=experiment,
            namespace=namespace,
            service_account=_service_account(service_account),
        )
        typer.echo(f"submitted run {result.run_id} to {host} (experiment {experiment})")

    @app.command("schedule")
    def schedule_command(
        cron: str = typer.Option(
            ...,
            "--cron",
            help='KFP cron with seconds first, e.g. "0 0 3 * * *" (daily at 03:00), or @daily, @every 24h.',
        ),
        host: str = typer.Option(..., "--host", help="KFP API endpoint."),
        config: str | None = typer.Option(None, "--config", help="PipelineParams YAML (local or gs://)."),
        overrides: list[str] = typer.Option(
            [], "--set", help="Override a parameter: key=value (repeatable)."
        ),
        experiment: str = typer.Option("diffusion-kto", "--experiment", help="KFP experiment name."),
        job_name: str = typer.Option("diffusion-kto-retrain-nightly", "--name", help="Recurring run name."),
        namespace: str | None = typer.Option(None, "--namespace", help="Kubeflow profile namespace."),
        cluster: str | None = typer.Option(None, "--cluster", help="ClusterSettings YAML."),
        service_account: str = typer.Option(
            CLUSTER_SERVICE_ACCOUNT,
            "--service-account",
            help="Pods' service account (\"\" for KFP's default).",
        ),
        pushgateway: str | None = typer.Option(
            None,
            "--pushgateway",
            help=f"Pushgateway (default: the params' pushgateway if set, else {CLUSTER_PUSHGATEWAY}).",
        ),
        replace: bool = typer.Option(
            False, "--replace", help="Delete a recurring run of the same name in the experiment first."
        ),
    ) -> None:
        """Create a recurring run: at most one at a time (max_concurrency=1), no catch-up of missed runs.

        Refuses when the experiment already has a recurring run of this name (two schedules would each
        allow one run at a time, so runs could overlap on the same registry), unless ``--replace``.
        """
        validate_cron(cron)
        params = load_params(config, overrides)
        arguments = cluster_arguments(params, pushgateway)
        # Compiled before the client exists: kfp.Client contacts the host as it is made, and a bad cluster
        # file must be refused before anything (the experiment included) is created there. Also, the new
        # schedule exists before the old one goes: a refused create never leaves no schedule at all.
        package = _compiled_package(cluster)
        client = _client(host, namespace)
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        existing = _recurring_runs_named(client, experiment_id, job_name)
        if existing and not replace:
            raise typer.BadParameter(
                f"experiment {experiment!r} already has a recurring run named {job_name!r} "
                f"({', '.join(existing)}); pass --replace to swap it, or --name for a second schedule"
            )
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            pipeline_package_path=package,
            params=arguments,
            service_account=_service_account(service_account),
        )
        for recurring_run_id in existing:
            client.delete_recurring_run(recurring_run_id)
        replaced = f", replacing {', '.join(existing)}" if existing else ""
        typer.echo(f"scheduled {job_name} ({cron}) on {host}: recurring run {job.recurring_run_id}{replaced}")
