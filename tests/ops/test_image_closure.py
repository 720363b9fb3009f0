"""Every distribution a step imports is installed in the image the step runs in.

An image installs ``diffusion_kto_pipelines[<DKTO_EXTRAS>]`` (the ARG of its Dockerfile) and nothing else.
A lazy ``import pandas`` inside a function only fails when the task runs on the cluster, after hours of
training (review: evaluate ran in dkto-trainer, where only mlflow had brought pandas into dkto-base).
This test computes, without Docker, the requirement closure each image installs (pyproject's dependencies
and extras, then the installed distributions' metadata), and the imports of each step's package (module
level and inside functions, following the project's own modules), and checks one against the other."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from test_images import COMPONENT_FILES, component_image, kfp_components, parse_dockerfile

from components.shared import images

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_PACKAGES = ("components", "pipelines")
# Modules imported only behind an opt-in extra that the image leaves out unless asked for; each is
# imported inside a function that turns ImportError into a message naming the extra or build argument.
OPT_IN = {
    "bitsandbytes": "bnb extra (trainer build-arg INSTALL_BITSANDBYTES=true), for use_8bit_adam",
    "deepspeed": "trainer build-arg INSTALL_DEEPSPEED=true",
    "open_clip": "hps extra, for the HPS v2 scorer",
    "ImageReward": "imagereward extra, for the ImageReward scorer",
}


def normalise(name: str) -> str:
    """A distribution name in PEP 503 form, so ``PyYAML`` and ``pyyaml`` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_holds(marker: Marker | None, extras: frozenset[str]) -> bool:
    """Whether a requirement's environment marker selects it for this platform and these extras."""
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in ("", *extras))


def requirement_closure(requirements: list[str]) -> set[str]:
    """Every distribution that installing ``requirements`` pulls in, read from the installed metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(spec).name, frozenset(Requirement(spec).extras)) for spec in requirements]
    while todo:
        name, extras = todo.pop()
        if (normalise(name), extras) in seen:
            continue
        seen.add((normalise(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if marker_holds(requirement.marker, extras):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return {name for name, _ in seen}


def image_extras(dockerfile: Path) -> list[str]:
    """The pyproject extras a Dockerfile installs: its builder stage's ``ARG DKTO_EXTRAS`` default."""
    for keyword, argument in parse_dockerfile(dockerfile.read_text()).stages[0].instructions:
        if keyword == "ARG" and argument.startswith("DKTO_EXTRAS="):
            return argument.split("=", 1)[1].split(",")
    raise AssertionError(f"{dockerfile}: no ARG DKTO_EXTRAS=... in the builder stage")


@cache
def image_closure(image: str) -> frozenset[str]:
    """The distributions installed in one image (by its components.shared.images tag)."""
    extras = image_extras(ROOT / images.DOCKERFILES[image])
    optional = PYPROJECT["project"]["optional-dependencies"]
    wanted = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        wanted += optional[extra]
    return frozenset(requirement_closure(wanted))


def module_file(module: str) -> Path | None:
    """The source file of one of the project's modules, or None for a name that is not a module."""
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def imported_names(module: str, source: Path) -> set[str]:
    """Dotted names one module imports anywhere in its body (functions included), relative ones resolved."""
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                head = f"{base}.{node.module}" if node.module else base
            else:
                head = node.module or ""
            names.add(head)
            names.update(f"{head}.{alias.name}" for alias in node.names)
    return names


def third_party_imports(roots: list[str]) -> dict[str, set[str]]:
    """Top-level third-party modules reachable from ``roots`` through the project's modules, with importers."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        source = module_file(module)
        if source is None:
            continue
        for name in imported_names(module, source):
            top = name.split(".")[0]
            if top in PROJECT_PACKAGES:
                parts = name.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, set()).add(module)
    return found


def step_modules(component_file: Path) -> list[str]:
    """Every module of a step's package: scorers and the like load by name, so all of them may run."""
    package = component_file.parent
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def missing_from_image(component_file: Path) -> dict[str, list[str]]:
    """{image: ["module (from importer): why"]} for each import of a step its image does not install."""
    distributions = metadata.packages_distributions()
    problems: dict[str, list[str]] = {}
    step_images = {component_image(c) for _, c in kfp_components(component_file)} - {None}
    imports = third_party_imports(step_modules(component_file))
    for image in sorted(str(i) for i in step_images):
        installed = image_closure(image)
        for module, importers in sorted(imports.items()):
            if module in OPT_IN:
                continue
            owners = {normalise(d) for d in distributions.get(module, [])}
            if not owners:
                problems.setdefault(image, []).append(
                    f"{module} (imported by {sorted(importers)[0]}): no installed distribution provides it; "
                    "add it to pyproject or to OPT_IN with the extra that brings it"
                )
            elif not owners & installed:
                problems.setdefault(image, []).append(
                    f"{module} (imported by {sorted(importers)[0]}): distribution {sorted(owners)} is not "
                    f"installed by the image's extras {image_extras(ROOT / images.DOCKERFILES[image])}"
                )
    return problems


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.parent.name)
def test_every_import_of_a_step_is_installed_in_its_image(path: Path) -> None:
    """Each third-party module a step's package imports (lazily too) is in its image's requirement closure."""
    assert missing_from_image(path) == {}


def test_opt_in_modules_belong_to_an_extra_or_a_build_argument() -> None:
    """Each module the check lets pass names the extra or build argument that installs it."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, why in OPT_IN.items():
        named = re.findall(r"(\w+) extra", why)
        assert named or "build-arg" in why, f"{module}: say which extra or build-arg installs it"
        for extra in named:
            assert extra in extras, f"{module}: extra {extra!r} is not in pyproject.toml"


def test_closure_sees_what_an_image_leaves_out() -> None:
    """The check can fail: mlflow (registry extra) is in dkto-base and not in dkto-trainer."""
    assert "mlflow" in image_closure(images.BASE_IMAGE)
    assert "mlflow" not in image_closure(images.TRAINER_IMAGE)
    assert "torch" in image_closure(images.TRAINER_IMAGE)
