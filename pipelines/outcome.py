"""The run's outcome, recorded by the pipeline's exit handler whether the run succeeded or failed.

:func:`pipelines.summary.summarize_run` (plain Python, testable alone) gathers what each step recorded under
``<outputs_root>/runs/<run_id>/steps/`` and the run's final status into ``summary.json``, and pushes
``dkto_pipeline_*`` metrics to the Pushgateway; ``record_run_outcome`` is the KFP exit task around it.
"""

from kfp import dsl

from components.shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def record_run_outcome(
    status: dsl.PipelineTaskFinalStatus,
    run_id: str,
    outputs_root: str,
    model_name: str = "",
    pushgateway: str = "",
) -> None:
    """Record the run's outcome (summary.json and pushed metrics) whether it succeeded or failed.

    Args:
        status: The final status of the tasks inside the exit handler (filled in by KFP).
        run_id: The pipeline run id.
        outputs_root: Root of the run records.
        model_name: Registered model name (for the summary).
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
    """
    from pipelines.summary import summarize_run

    summarize_run(
        state=str(status.state),
        run_id=run_id,
        outputs_root=outputs_root,
        error_message=status.error_message or "",
        failed_task=status.pipeline_task_name or "",
        pushgateway=pushgateway,
        model_name=model_name,
    )
