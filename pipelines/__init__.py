"""The pipeline DAG, its compilation, local runs, submission and schedules, and the dkto CLI."""
