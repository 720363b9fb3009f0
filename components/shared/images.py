"""Container images of the steps. Tags derive from the package version so code and image cannot drift.

``images/base/Dockerfile`` builds ``BASE_IMAGE`` (CPU steps) and ``images/trainer/Dockerfile`` builds
``TRAINER_IMAGE`` (CUDA). Override the registry with ``DKTO_IMAGE_REGISTRY`` when compiling.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed version of diffusion-kto-pipelines (``0.0.0`` when run from an uninstalled tree)."""
    try:
        return version("diffusion-kto-pipelines")
    except PackageNotFoundError:
        return "0.0.0"


REGISTRY = os.environ.get("DKTO_IMAGE_REGISTRY", "ghcr.io/diffusion-kto-pipelines")
BASE_IMAGE = f"{REGISTRY}/dkto-base:{package_version()}"
TRAINER_IMAGE = f"{REGISTRY}/dkto-trainer:{package_version()}"
# Which Dockerfile builds which image (a test checks each component's image against this map).
DOCKERFILES = {BASE_IMAGE: "images/base/Dockerfile", TRAINER_IMAGE: "images/trainer/Dockerfile"}
