"""A small model-registry interface and its MLflow implementation.

The interface (``Registry``) is what promotion needs and no more: register a model directory as a new
version, read and move aliases, tag versions, list versions, and hold a cross-process lock on one model.
It is shaped so that a Kubeflow Model Registry backend fits: its RegisteredModel / ModelVersion /
ModelArtifact map onto ``ModelVersion`` (``source`` = the ModelArtifact URI, tags = custom properties),
aliases become custom properties of the RegisteredModel, and the lock is the same trick as below (a
uniquely named RegisteredModel, whose name is unique in the MLMD store).

``MlflowRegistry`` talks to MLflow through ``MlflowClient`` only, either embedded (``sqlite:///…`` tracking
and registry store on this machine, model files under a local or gs:// artifact root) or to an MLflow
server (``http://host:port``). Model files are uploaded by ``components.shared.storage`` (verified against
a manifest taken before the upload) into the artifact directory of an MLflow run, and the version is
created with ``source="runs:/<run_id>/model"`` only after every file is verified.

Why the lock is what it is: MLflow has no compare-and-set on aliases, and a lease written as a tag and
read back is not mutually exclusive (two writers can each read their own write). Creating a registered
model named ``<model>.promotion-lock`` is: the name is the primary key of the ``registered_models`` table,
so of two concurrent creates exactly one commits and the other gets ``RESOURCE_ALREADY_EXISTS`` — on the
embedded SQLite store and on a server's database alike. A lock left by a crashed run (older than its
time-to-live) is broken by *renaming* it to ``<lock>.stale-<owner token>``; that rename is itself unique
per observed owner, so two runs breaking the same stale lock cannot both succeed, and neither can rename
a fresh lock taken in between (its target name already exists). Release is a rename to
``<lock>.released-<owner token>`` and then a delete of that, for the same reason: a resent request must
never act on a lock taken by the next run in the meantime (see ``_release``).

Why registration is idempotent: MLflow's HTTP client retries every request, POSTs included, on 5xx and
dropped connections, and pipelines retry whole steps. A create whose answer was lost is therefore sent
again, and without a key each copy becomes a new version. ``register_version(..., registration_key=...)``
tags the version with the caller's key and a digest of the files, looks for a version with both before
uploading anything, looks again when the create itself failed (it may have committed), and after a create
keeps only the lowest-numbered version carrying them: a version number is assigned inside the create's
transaction, so the lowest one committed first and every later creator sees it, and each creator deletes
the higher duplicates (never one that has an alias). All creators of one key thus return the same version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from components.shared import storage
from components.shared.telemetry import get_logger

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = get_logger("promote.registry")

PRODUCTION = "production"
PREVIOUS_PRODUCTION = "previous-production"
CANDIDATE = "candidate"
LOCK_SUFFIX = ".promotion-lock"
MODEL_SUBDIR = "model"
MANIFEST_FILE = "dkto_manifest.json"
REGISTRATION_KEY_TAG = "registration_key"
FILES_DIGEST_TAG = "files_digest"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,250}$")


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the model, version or alias."""


class LockTimeout(RegistryError):
    """Another run held the model's promotion lock for longer than we were willing to wait."""


class LeaseLost(RegistryError):
    """Our promotion lock was broken by another run (we held it past its time-to-live)."""


@dataclass
class ModelVersion:
    """One registered version: its number, where its files are, its aliases and tags."""

    name: str
    version: str
    source: str
    files_uri: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    created_at_ms: int | None = None
    reused: bool = False
    """True when ``register_version`` returned a version registered earlier under the same registration
    key (a retried step, or a concurrent registration of the same candidate) instead of creating one."""


@dataclass
class Lease:
    """A held promotion lock: ``check()`` raises ``LeaseLost`` if another run has taken it over."""

    lock_name: str
    owner: str
    acquired_at: float
    ttl_s: float
    read_holder: Callable[[str], dict[str, str] | None]

    def check(self) -> None:
        """Re-read the lock and fail if it is no longer ours (called just before the commit write)."""
        holder = self.read_holder(self.lock_name)
        if holder is None or holder.get("owner") != self.owner:
            raise LeaseLost(
                f"promotion lock {self.lock_name!r} is no longer held by this run (owner {self.owner}); "
                f"it was broken after {self.ttl_s:.0f}s as abandoned. Nothing was changed by this run's "
                "commit step; re-run the promotion."
            )


@runtime_checkable
class Registry(Protocol):
    """What promotion needs from a model registry (MLflow today; Kubeflow Model Registry fits too)."""

    def register_version(
        self,
        name: str,
        model_uri: str,
        tags: dict[str, str],
        *,
        chunk_size: int | None = None,
        registration_key: str | None = None,
    ) -> ModelVersion:
        """Upload ``model_uri``'s files (verified), then create a new version of ``name`` with ``tags``.

        With ``registration_key``, a version of ``name`` registered under the same key with the same files
        is returned (``reused=True``) instead of creating another, also when a create is retried.
        """
        ...

    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version (raises ``RegistryError`` naming the versions that exist if it does not)."""
        ...

    def get_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version an alias points at, or None."""
        ...

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point an alias at a version (one atomic write)."""
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias (missing is not an error)."""
        ...

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags on a version."""
        ...

    def set_model_tags(self, name: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags on the registered model (the audit trail of alias moves)."""
        ...

    def aliases(self, name: str) -> dict[str, str]:
        """``{alias: version}`` of a registered model ({} if it is not registered)."""
        ...

    def readable_files(self, version: ModelVersion) -> str:
        """A local path or gs:// URI holding the version's files (downloaded if the backend proxies them)."""
        ...

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        ...

    def lock(
        self, name: str, *, owner: str, timeout_s: float, ttl_s: float
    ) -> contextlib.AbstractContextManager[Lease]:
        """Hold the model's promotion lock (mutually exclusive across processes and machines)."""
        ...

    def compare_and_set_alias(
        self, name: str, alias: str, expected_version: str | None, new_version: str, *, owner: str = ""
    ) -> bool:
        """Under the lock: move ``alias`` to ``new_version`` only if it points at ``expected_version``."""
        ...


def storage_uri(uri: str) -> str | None:
    """``uri`` as ``components.shared.storage`` reads it (local path or gs://), or None for other schemes.

    ``file://`` URIs become paths; ``mlflow-artifacts:/…`` (an MLflow server proxying its artifacts),
    ``s3://`` and the like are None: they go through the MLflow client instead.
    """
    if storage.is_gcs(uri):
        return uri
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri):
        return None
    return uri


def _is_already_exists(err: Exception) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(err, "error_code", "")) or "already exists" in str(err)


def _is_duplicate_insert(err: Exception) -> bool:
    """MLflow's SQL store sets an alias by read-then-insert: two concurrent first sets of one alias both
    insert and one hits the UNIQUE key. Again, it finds the row and updates it."""
    return "UNIQUE constraint" in str(err) or "IntegrityError" in str(err)


def _is_not_found(err: Exception) -> bool:
    code = str(getattr(err, "error_code", ""))
    return "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code or "not found" in str(err).lower()


def _is_missing(err: Exception) -> bool:
    """MLflow's own "no such registered model" answer (embedded store and server alike), by error code only.

    Not ENDPOINT_NOT_FOUND (an HTTP 404 from a wrong URL or a proxy) nor any message text: those mean the
    registry was not reached, which is not the same as an empty registry.
    """
    return str(getattr(err, "error_code", "")) == "RESOURCE_DOES_NOT_EXIST"


def files_digest(manifest: dict[str, dict[str, Any]]) -> str:
    """sha256 of a ``storage.file_manifest`` (every file's path, size and CRC32C): the files' identity."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _is_busy(err: Exception) -> bool:
    """SQLite 'database is locked' (another writer) is transient: retry."""
    return "database is locked" in str(err) or "database is busy" in str(err)


class MlflowRegistry:
    """The ``Registry`` on MLflow: embedded (``sqlite:///…``) or an MLflow server (``http://…``)."""

    def __init__(self, uri: str, *, artifact_root: str | None = None) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        if uri.startswith("sqlite:///"):
            db_path = Path(uri[len("sqlite:///") :])
            db_path.parent.mkdir(parents=True, exist_ok=True)
            if artifact_root is None:
                artifact_root = str(db_path.resolve().parent / "artifacts")
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # ------------------------------------------------------------ retries on a busy SQLite store

    def _retry(
        self,
        fn: Any,
        *args: Any,
        attempts: int = 60,
        transient: Callable[[Exception], bool] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``fn(*args, **kwargs)``, again while it fails with an error ``transient`` accepts (default: a
        busy SQLite store)."""
        transient = transient or _is_busy
        for i in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if not transient(err) or i == attempts - 1:
                    raise
                time.sleep(0.05 + 0.05 * (i % 5))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ reading

    def _to_version(self, mv: Any, aliases: list[str] | None = None) -> ModelVersion:
        tags = dict(mv.tags or {})
        return ModelVersion(
            name=mv.name,
            version=str(mv.version),
            source=mv.source,
            files_uri=tags.get("files_uri", mv.source),
            aliases=sorted(aliases if aliases is not None else list(getattr(mv, "aliases", []) or [])),
            tags=tags,
            run_id=mv.run_id,
            created_at_ms=mv.creation_timestamp,
        )

    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version of ``name``."""
        try:
            mv = self._retry(self.client.get_model_version, name, str(version))
        except Exception as err:
            if _is_not_found(err):
                have = [v.version for v in self.list_versions(name)]
                raise RegistryError(
                    f"model {name!r} has no version {version!r}; registered versions: {have or 'none'}"
                ) from None
            raise
        return self._to_version(mv)

    def get_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` points at, or None (also when the model is not registered yet).

        Read through the model's alias map rather than MLflow's by-alias endpoint: that one answers a
        missing alias with INVALID_PARAMETER_VALUE, a code it also uses for malformed requests, and an
        unreachable or misconfigured registry must fail here, never read as "nothing in production".
        """
        version = self.aliases(name).get(alias)
        return None if version is None else self.get_version(name, version)

    def aliases(self, name: str) -> dict[str, str]:
        """``{alias: version}`` of a registered model ({} if it is not registered)."""
        try:
            rm = self._retry(self.client.get_registered_model, name)
        except Exception as err:
            if _is_missing(err):
                return {}
            raise RegistryError(
                f"registry {self.uri}: could not read model {name!r} and its aliases: {err}"
            ) from err
        return {a: str(v) for a, v in (rm.aliases or {}).items()}

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first, with their aliases."""
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases(name).items():
            by_version.setdefault(version, []).append(alias)
        found = self._retry(self.client.search_model_versions, f"name = '{name}'")
        out = [self._to_version(mv, by_version.get(str(mv.version), [])) for mv in found]
        return sorted(out, key=lambda v: int(v.version))

    # ------------------------------------------------------------ writing

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (a single row write in MLflow's store)."""
        self._retry(
            self.client.set_registered_model_alias,
            name,
            alias,
            str(version),
            transient=lambda err: _is_busy(err) or _is_duplicate_insert(err),
        )

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``; missing is not an error."""
        try:
            self._retry(self.client.delete_registered_model_alias, name, alias)
        except Exception as err:
            if not _is_not_found(err):
                raise

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags on one version."""
        for key, value in tags.items():
            self._retry(self.client.set_model_version_tag, name, str(version), key, str(value))

    def set_model_tags(self, name: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags on the registered model itself (the audit trail of alias moves)."""
        for key, value in tags.items():
            self._retry(self.client.set_registered_model_tag, name, key, str(value))

    def _ensure_model(self, name: str) -> None:
        try:
            self._retry(self.client.create_registered_model, name, tags={"dkto.kind": "model"})
        except Exception as err:
            if not _is_already_exists(err):
                raise

    def _experiment_id(self, name: str) -> str:
        exp_name = f"dkto-registry/{name}"
        exp = self._retry(self.client.get_experiment_by_name, exp_name)
        if exp is not None:
            return str(exp.experiment_id)
        location = storage.join(self.artifact_root, name) if self.artifact_root else None
        try:
            return str(self._retry(self.client.create_experiment, exp_name, artifact_location=location))
        except Exception as err:
            if not _is_already_exists(err):
                raise
            return str(self._retry(self.client.get_experiment_by_name, exp_name).experiment_id)

    def register_version(
        self,
        name: str,
        model_uri: str,
        tags: dict[str, str],
        *,
        chunk_size: int | None = None,
        registration_key: str | None = None,
    ) -> ModelVersion:
        """Upload the model directory into a new MLflow run, verify it, then create the version.

        The order is the guarantee: the version row is created only after every file is verified
        against the manifest taken before the upload, so a failed or interrupted upload leaves a FAILED
        run with partial files (cleaned up where possible) and no version pointing at them.

        With ``registration_key`` (letters, digits and ``._:-``) the call is idempotent for that key and
        these files: see the module docstring. The version (and its run) carry the key and the files'
        digest as tags ``registration_key`` and ``files_digest``.
        """
        local = storage.local_dir(model_uri)
        if not local.is_dir():
            raise RegistryError(f"model_uri={model_uri!r}: not a directory of model files")
        manifest = storage.file_manifest(local)
        if not manifest:
            raise RegistryError(f"model_uri={model_uri!r}: the directory has no files to register")
        key_tags: dict[str, str] = {}
        if registration_key is not None:
            if not _KEY_PATTERN.match(registration_key):
                raise RegistryError(
                    f"registration_key={registration_key!r}: use 1-250 letters, digits, '.', '_', ':' or '-' "
                    "(a hash of what identifies the registration)"
                )
            key_tags = {REGISTRATION_KEY_TAG: registration_key, FILES_DIGEST_TAG: files_digest(manifest)}
            existing = self._registered_with(name, key_tags)
            if existing:
                log.info(
                    "%s version %s is already registered under key %s with these files; not registering "
                    "%s again",
                    name,
                    existing[0].version,
                    registration_key,
                    model_uri,
                )
                return self._keep_first(name, key_tags, existing, created_run=None)
        self._ensure_model(name)
        run = self._retry(
            self.client.create_run,
            self._experiment_id(name),
            tags={
                **{f"dkto.{k}": str(v) for k, v in tags.items()},
                "dkto.model_uri": model_uri,
                **{f"dkto.{k}": v for k, v in key_tags.items()},
            },
            run_name=f"register-{name}",
        )
        run_id = run.info.run_id
        artifact_uri = run.info.artifact_uri.rstrip("/")
        files_uri = f"{artifact_uri}/{MODEL_SUBDIR}"
        try:
            files_uri = self._upload(run_id, artifact_uri, local, manifest, chunk_size)
        except Exception as err:
            self._fail_run(run_id, files_uri, err)
            raise RegistryError(
                f"registering {model_uri!r} as a new version of {name!r} failed while uploading its files "
                f"to {files_uri}: {err}. Nothing was registered (run {run_id} marked FAILED)."
            ) from err
        version_tags = {
            **{k: str(v) for k, v in tags.items()},
            "files_uri": files_uri,
            "model_uri": model_uri,
            "files_count": str(len(manifest)),
            "files_bytes": str(sum(int(m["size"]) for m in manifest.values())),
            **key_tags,
        }
        try:
            mv = self._retry(
                self.client.create_model_version,
                name,
                source=f"runs:/{run_id}/{MODEL_SUBDIR}",
                run_id=run_id,
                tags=version_tags,
            )
        except Exception as err:
            # The create may have committed and only its answer was lost (the client's retries then failed
            # too, or answered 5xx): the key finds that version.
            committed = self._registered_with(name, key_tags) if key_tags else []
            if not committed:
                raise
            log.warning(
                "creating %s version from run %s failed (%s), but a version under key %s exists: using it",
                name,
                run_id,
                err,
                registration_key,
            )
        else:
            if not key_tags:
                self._retry(self.client.set_terminated, run_id, "FINISHED")
                return self._to_version(mv)
            committed = self._registered_with(name, key_tags) or [self._to_version(mv)]
        self._retry(self.client.set_terminated, run_id, "FINISHED")
        return self._keep_first(name, key_tags, committed, created_run=run_id)

    def _registered_with(self, name: str, key_tags: dict[str, str]) -> list[ModelVersion]:
        """Versions of ``name`` carrying exactly these tags, lowest version first ([] if none)."""
        clauses = " and ".join(f"tags.{k} = '{v}'" for k, v in sorted(key_tags.items()))
        try:
            found = self._retry(self.client.search_model_versions, f"name = '{name}' and {clauses}")
        except Exception as err:
            if _is_not_found(err):
                return []
            raise
        return sorted((self._to_version(mv) for mv in found), key=lambda v: int(v.version))

    def _keep_first(
        self, name: str, key_tags: dict[str, str], found: list[ModelVersion], *, created_run: str | None
    ) -> ModelVersion:
        """Keep the lowest version of one registration key, delete the later duplicates, return the kept one.

        Later duplicates come from a retried create (same run) or a concurrent registration of the same
        candidate (another run, whose files stay under that run). One that already has an alias is kept
        and logged: something points at it, so removing it is not this call's decision.
        """
        keep, duplicates = found[0], found[1:]
        aliases = self.aliases(name) if duplicates else {}
        aliased = set(aliases.values())
        removed: list[str] = []
        for dup in duplicates:
            if dup.version in aliased:
                log.warning(
                    "%s version %s duplicates version %s (key %s) but has an alias; kept",
                    name,
                    dup.version,
                    keep.version,
                    key_tags[REGISTRATION_KEY_TAG],
                )
                continue
            try:
                self._retry(self.client.delete_model_version, name, dup.version)
            except Exception as err:
                # Another creator of the same key removed it first (or our retried DELETE committed twice).
                if not _is_not_found(err):
                    raise
            removed.append(dup.version)
        if removed:
            log.warning(
                "%s: removed %d duplicate version(s) %s of registration key %s (a retried or concurrent "
                "create); kept version %s",
                name,
                len(removed),
                ", ".join(removed),
                key_tags[REGISTRATION_KEY_TAG],
                keep.version,
            )
        kept = self.get_version(name, keep.version)
        kept.reused = created_run is None or kept.run_id != created_run
        return kept

    def _upload(
        self,
        run_id: str,
        artifact_uri: str,
        local: Path,
        manifest: dict[str, dict[str, Any]],
        chunk_size: int | None,
    ) -> str:
        """Copy the files under the run and verify them; returns where they are."""
        dest = f"{artifact_uri}/{MODEL_SUBDIR}"
        direct = storage_uri(dest)
        if direct is not None:
            dest = direct
            storage.upload_dir(local, dest, chunk_size=chunk_size, manifest=manifest)
            storage.write_json(storage.join(dest, MANIFEST_FILE), manifest)
            return dest
        # An MLflow server that proxies artifacts (mlflow-artifacts:/) exposes no checksums. So upload a
        # private snapshot that was itself verified against the manifest (a file changing under us fails
        # here, as it does on GCS), then check every file arrived with its size.
        with tempfile.TemporaryDirectory(prefix="dkto-register-") as tmp:
            snapshot = Path(tmp) / MODEL_SUBDIR
            storage.upload_dir(local, str(snapshot), manifest=manifest)
            storage.write_json(str(snapshot / MANIFEST_FILE), manifest)
            self.client.log_artifacts(run_id, str(snapshot), MODEL_SUBDIR)
        arrived = self._artifact_sizes(run_id, MODEL_SUBDIR)
        for rel, expected in manifest.items():
            got = arrived.get(f"{MODEL_SUBDIR}/{rel}")
            if got != expected["size"]:
                raise RegistryError(f"{dest}/{rel}: uploaded {got} bytes, expected {expected['size']}")
        return dest

    def _artifact_sizes(self, run_id: str, path: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for info in self.client.list_artifacts(run_id, path):
            if info.is_dir:
                out.update(self._artifact_sizes(run_id, info.path))
            else:
                out[info.path] = int(info.file_size or 0)
        return out

    def _fail_run(self, run_id: str, files_uri: str, err: Exception) -> None:
        with contextlib.suppress(Exception):
            self.client.set_tag(run_id, "dkto.error", f"{type(err).__name__}: {err}"[:4000])
            self.client.set_terminated(run_id, "FAILED")
        # Partial files are never referenced by a version; removing them just saves space.
        direct = storage_uri(files_uri)
        if direct is not None:
            with contextlib.suppress(Exception):
                storage.delete(direct)

    def readable_files(self, version: ModelVersion) -> str:
        """Where ``components.shared.storage`` can read a version's files; proxied artifacts are downloaded
        once into the cache (keyed by registry, model and version, which never change contents)."""
        direct = storage_uri(version.files_uri)
        if direct is not None:
            return direct
        import mlflow.artifacts

        registry_key = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        dest = storage.cache_root() / "registry" / registry_key / f"{version.name}-{version.version}"
        if not (dest / ".complete").exists():
            dest.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"runs:/{version.run_id}/{MODEL_SUBDIR}",
                dst_path=str(dest),
                tracking_uri=self.uri,
            )
            (dest / ".complete").write_text(version.files_uri)
        return str(dest / MODEL_SUBDIR)

    # ------------------------------------------------------------ the promotion lock

    def _lock_holder(self, lock_name: str) -> dict[str, str] | None:
        try:
            rm = self._retry(self.client.get_registered_model, lock_name)
        except Exception as err:
            if _is_not_found(err):
                return None
            raise
        return dict(rm.tags or {})

    @contextlib.contextmanager
    def lock(
        self, name: str, *, owner: str = "", timeout_s: float = 60.0, ttl_s: float = 300.0
    ) -> Iterator[Lease]:
        """Hold ``<name>.promotion-lock`` (see the module docstring for why this is mutually exclusive)."""
        lock_name = name + LOCK_SUFFIX
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout_s
        holder: dict[str, str] | None = None
        while True:
            now = time.time()
            try:
                self.client.create_registered_model(
                    lock_name,
                    tags={
                        "dkto.kind": "promotion-lock",
                        "owner": token,
                        "holder": owner,
                        "acquired_at": f"{now:.3f}",
                        "ttl_s": f"{ttl_s:.0f}",
                    },
                    description=f"Promotion lock of {name!r}, held by {owner or token}. Deleted on release.",
                )
                break
            except Exception as err:
                contended = _is_already_exists(err) or _is_busy(err)
                holder = self._lock_holder(lock_name)
                if holder is not None and holder.get("owner") == token:
                    # Our create committed but its answer was lost: MLflow's HTTP client resent the POST and
                    # saw our own lock, or its retries ran out. The token is ours alone, so the lock is ours.
                    break
                if not contended:
                    raise
            if holder is not None:
                age = now - float(holder.get("acquired_at", now))
                if age > float(holder.get("ttl_s", ttl_s)):
                    self._break_stale_lock(lock_name, holder, age)
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"model {name!r}: promotion lock {lock_name!r} is held by "
                    f"{(holder or {}).get('holder') or 'another run'} since "
                    f"{(holder or {}).get('acquired_at', '?')} (epoch s); waited {timeout_s:.0f}s. If that "
                    f"run crashed, the lock is broken automatically once older than its TTL."
                )
            time.sleep(0.05 + (uuid.uuid4().int % 100) / 1000)
        lease = Lease(lock_name, token, time.time(), ttl_s, self._lock_holder)
        try:
            yield lease
        finally:
            self._release(lease)

    def _break_stale_lock(self, lock_name: str, holder: dict[str, str], age: float) -> None:
        stale_name = f"{lock_name}.stale-{holder.get('owner', 'unknown')}"
        try:
            self._retry(self.client.rename_registered_model, lock_name, stale_name)
            log.warning(
                "broke abandoned promotion lock %s held by %s for %.0fs (kept as %s)",
                lock_name,
                holder.get("holder") or holder.get("owner"),
                age,
                stale_name,
            )
        except Exception:
            # Another run broke it first: the stale name exists, the row is gone, or (a concurrent rename)
            # the store's UPDATE matched no row. All fine, as long as the stale lock is no longer the lock.
            now_held = self._lock_holder(lock_name)
            if now_held is not None and now_held.get("owner") == holder.get("owner"):
                raise

    def _release(self, lease: Lease) -> None:
        holder = self._lock_holder(lease.lock_name)
        if holder is None or holder.get("owner") != lease.owner:
            log.error("promotion lock %s was taken over before release; leaving it alone", lease.lock_name)
            return
        # Release by renaming to a name only this lease uses, then deleting that. A DELETE of the lock's
        # own name is not safe: if it commits and its answer is lost, the next run can take the lock before
        # MLflow's client resends the DELETE, which then removes *that* run's lock. A resent rename cannot:
        # its target already exists, so it fails. Between the owner check and the rename only a breaker
        # could act, and only if we overran the TTL at this very moment (minutes against milliseconds).
        released = f"{lease.lock_name}.released-{lease.owner}"
        try:
            self._retry(self.client.rename_registered_model, lease.lock_name, released)
        except Exception:
            mine = self._lock_holder(released)
            if mine is None or mine.get("owner") != lease.owner:
                now_held = self._lock_holder(lease.lock_name)
                if now_held is not None and now_held.get("owner") == lease.owner:
                    raise
                log.error(
                    "promotion lock %s was taken over before release; leaving it alone", lease.lock_name
                )
                return
            # The first rename committed; the resend found the name taken (by our own released lock, or by
            # the next run's lock, which it left alone).
        try:
            self._retry(self.client.delete_registered_model, released)
        except Exception as err:
            # A resent DELETE whose first attempt committed finds nothing; the name is ours alone.
            if not _is_not_found(err):
                raise

    # ------------------------------------------------------------ compare-and-set

    def compare_and_set_alias(
        self,
        name: str,
        alias: str,
        expected_version: str | None,
        new_version: str,
        *,
        owner: str = "",
        timeout_s: float = 60.0,
        ttl_s: float = 300.0,
    ) -> bool:
        """Move ``alias`` to ``new_version`` only if it still points at ``expected_version`` (None = unset)."""
        with self.lock(name, owner=owner, timeout_s=timeout_s, ttl_s=ttl_s) as lease:
            current = self.aliases(name).get(alias)
            if current != (None if expected_version is None else str(expected_version)):
                return False
            lease.check()
            self.set_alias(name, alias, new_version)
            return True


def open_registry(uri: str, *, artifact_root: str | None = None) -> Registry:
    """The registry at ``uri``: ``sqlite:///path.db`` (embedded MLflow) or ``http(s)://host:port`` (server)."""
    if uri.startswith(("sqlite:///", "http://", "https://")):
        return MlflowRegistry(uri, artifact_root=artifact_root)
    raise RegistryError(
        f"registry uri {uri!r} is not supported: use sqlite:///path/to/mlflow.db or http(s)://host:port "
        "(an MLflow server)"
    )
