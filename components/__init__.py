"""Kubeflow Pipelines components of diffusion-kto-pipelines: one package per pipeline step."""
