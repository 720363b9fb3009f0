"""Atomic training checkpoints (local or gs://), keep-last-K pruning, resume, and SIGTERM handling.

A checkpoint is ``<checkpoint_dir>/checkpoint-<step:08d>/``: accelerate's ``save_state`` (model,
optimizer, LR scheduler, EMA, and the python / numpy / torch / CUDA RNG states of every process) plus
``trainer_state.json`` (optimizer step, micro-step = the sampler's position, config and data hashes) and
a ``COMPLETE`` marker written last. Locally it is written into a temp directory and renamed into place;
on gs:// (no rename) the marker is uploaded after every other file, and a checkpoint without it is
ignored. Resuming restores all of it, so a resumed run continues exactly as an uninterrupted one.

A LoRA run (:func:`keep_only_trainable_weights`) saves only the UNet's trainable tensors, the adapter
(``trainable_weights.safetensors``), not the frozen base under it, which is the pretrained model the run
names and is reloaded from there on resume: tens of MB instead of 3.4 GB for SD v1.5.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import torch

from components.shared import storage
from components.shared.telemetry import get_logger

log = get_logger("train.checkpoint")

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable_weights.safetensors"
_NAME = re.compile(r"checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"checkpoint-{step:08d}"


def list_checkpoints(checkpoint_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``checkpoint_dir`` as (step, uri), oldest first."""
    found: dict[int, str] = {}
    if storage.is_gcs(checkpoint_dir):
        for uri in storage.list_files(checkpoint_dir):
            parent, _, name = uri.rpartition("/")
            match = _NAME.search(parent)
            # Only direct children, as locally: the listing is recursive, and a checkpoint under a
            # sub-prefix (another run's <checkpoint_dir>/<run>/checkpoint-N) is not this directory's.
            if name == MARKER and match and parent == storage.join(checkpoint_dir, match.group(0)):
                found[int(match.group(1))] = parent
    else:
        root = Path(checkpoint_dir)
        if root.is_dir():
            for child in root.iterdir():
                match = _NAME.fullmatch(child.name)
                if match and (child / MARKER).exists():
                    found[int(match.group(1))] = str(child)
    return sorted(found.items())


def resolve_resume(resume_from: str | None, checkpoint_dir: str) -> str | None:
    """The checkpoint to resume from: None (fresh start), the newest for 'latest', or the given path."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            log.info("resume_from=latest: no complete checkpoint in %s, starting fresh", checkpoint_dir)
            return None
        return found[-1][1]
    if not storage.exists(storage.join(resume_from, MARKER)):
        raise FileNotFoundError(
            f"resume_from={resume_from!r} is not a complete checkpoint (no {MARKER} file); use 'latest' or a "
            f"directory named checkpoint-NNNNNNNN under the checkpoint_dir"
        )
    return resume_from


def _data_hash_of(uri: str) -> str | None:
    """The ``data_hash`` in a checkpoint's trainer_state.json (None when it cannot be read)."""
    try:
        return json.loads(storage.read_text(storage.join(uri, STATE_FILE))).get("data_hash")
    except Exception:  # a checkpoint without a readable state is not known to hold this run's data
        return None


def resumed_step_in(checkpoint_dir: str, resume_uri: str | None, step: int) -> int | None:
    """``step`` when ``resume_uri`` is a checkpoint directly in ``checkpoint_dir``; None otherwise."""
    if not resume_uri:
        return None
    found = [uri for _, uri in list_checkpoints(checkpoint_dir)]
    inside = any(uri.rstrip("/") == resume_uri.rstrip("/") for uri in found)
    if not inside and not storage.is_gcs(resume_uri):
        inside = Path(resume_uri).resolve() in {Path(uri).resolve() for uri in found}
    return step if inside else None


def check_checkpoint_dir(checkpoint_dir: str, resumed_step: int | None, data_hash: str) -> None:
    """Refuse, before training, a run whose checkpoints would mix with (or delete) another run's.

    ``resumed_step``: the step of the checkpoint this run resumed from in ``checkpoint_dir`` (None: it did
    not resume from one there). A run that did not resume from this directory may not write into one that
    already holds checkpoints, whatever their data: its first save would either delete them (they are
    "later") or, with keep-last-K pruning, be deleted in their favour, and ``resume_from=latest`` would pick
    whichever is newest. Same data is refused too, rather than guessed to be a rewind: the user says which
    by resuming (``latest`` or a checkpoint path in this directory) or by giving another checkpoint_dir.
    A run resumed from a checkpoint here may overwrite the later ones (a rewind) only when they hold the
    same training data.
    """
    found = list_checkpoints(checkpoint_dir)
    if resumed_step is None:
        if found:
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir!r} already holds {len(found)} checkpoint(s) (steps "
                f"{', '.join(str(s) for s, _ in found)}) and this run does not resume from one of them; "
                "its checkpoints would delete or be mixed with them. Set resume_from to 'latest' (or a "
                "checkpoint path in that directory) to continue that run, or point checkpoint_dir at an "
                "empty directory for a new run."
            )
        return
    other = [uri for s, uri in found if s > resumed_step and _data_hash_of(uri) != data_hash]
    if other:
        raise ValueError(
            f"checkpoint_dir {checkpoint_dir!r}: checkpoint(s) after step {resumed_step} were written for other "
            f"training data than this run's ({data_hash}): {', '.join(other)}; they are another run's. Point "
            "checkpoint_dir at an empty directory for this run."
        )


def save_checkpoint(
    accelerator: Any,
    checkpoint_dir: str,
    step: int,
    state: dict[str, Any],
    keep_last: int,
    *,
    resumed_step: int | None = None,
) -> str:
    """Write the checkpoint of ``step`` atomically (every process must call this); returns its URI.

    ``resumed_step``: the step of the checkpoint in ``checkpoint_dir`` this run resumed from (None: it did
    not resume from there). Only then are later checkpoints of the same data (``state["data_hash"]``) an
    abandoned branch of this run, dropped; see :func:`drop_abandoned_branch`.
    """
    name = checkpoint_name(step)
    remote = storage.is_gcs(checkpoint_dir)
    staging_root = storage.cache_root() / "checkpoint-staging" if remote else Path(checkpoint_dir)
    staging = staging_root / f".tmp-{name}"
    # gs://: each node stages in a folder of its own (named by its first global rank, since DKTO_CACHE_DIR
    # may be a volume the nodes share), owned by the node's first process; every rank writes files of its
    # own there (its RNG state, DeepSpeed's optimizer shards). A local checkpoint_dir is one folder all
    # processes share.
    if remote:
        staging = staging.with_name(
            f"{staging.name}-node{accelerator.process_index - accelerator.local_process_index}"
        )
    owns_staging = accelerator.is_local_main_process if remote else accelerator.is_main_process
    if owns_staging:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    final = storage.join(checkpoint_dir, name)
    if remote and owns_staging and not accelerator.is_main_process:
        # Another node's share goes up before node 0 writes the marker that makes the checkpoint complete.
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            storage.upload_file(path, storage.join(final, path.relative_to(staging).as_posix()))
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if resumed_step is not None:
            drop_abandoned_branch(checkpoint_dir, step, data_hash=state.get("data_hash"))
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        (staging / MARKER).write_text(str(step))
        if remote:
            for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MARKER):
                storage.upload_file(path, storage.join(final, path.relative_to(staging).as_posix()))
            storage.upload_file(staging / MARKER, storage.join(final, MARKER))
            shutil.rmtree(staging, ignore_errors=True)
        else:
            if Path(final).exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        prune(checkpoint_dir, keep_last)
        log.info("checkpoint written: %s", final)
    accelerator.wait_for_everyone()
    return final


def drop_abandoned_branch(checkpoint_dir: str, step: int, *, data_hash: str | None = None) -> list[str]:
    """Delete the complete checkpoints of steps after ``step`` (of training data ``data_hash`` only, when
    given); returns their URIs.

    Called only for a run resumed from an older checkpoint of this directory (a rewind): later checkpoints
    of the same data belong to the branch it abandoned. Left in place, keep-last-K pruning would delete
    this run's own checkpoints in their favour, and ``resume_from=latest`` would jump back to them.
    Checkpoints of other data are never deleted here (:func:`check_checkpoint_dir` refuses them at start).
    """
    later = [
        uri
        for s, uri in list_checkpoints(checkpoint_dir)
        if s > step and (data_hash is None or _data_hash_of(uri) == data_hash)
    ]
    for uri in later:
        storage.delete(uri)
    if later:
        log.warning(
            "checkpoint_dir %s: deleted %d checkpoint(s) after step %d of an abandoned branch (the run was "
            "resumed from an earlier one): %s",
            checkpoint_dir,
            len(later),
            step,
            ", ".join(later),
        )
    return later


def prune(checkpoint_dir: str, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints."""
    found = list_checkpoints(checkpoint_dir)
    for _step, uri in found[: max(0, len(found) - keep_last)]:
        storage.delete(uri)


def load_checkpoint(accelerator: Any, uri: str, *, use_lora: bool | None = None) -> dict[str, Any]:
    """Restore accelerate's state from a checkpoint (local or gs://); returns its trainer_state.json.

    ``use_lora``: whether the resuming run trains a LoRA adapter; a full fine-tune cannot resume from an
    adapter-only checkpoint (it has no UNet weights), and is told so before anything is loaded.
    """
    local = storage.local_dir(uri) if storage.is_gcs(uri) else Path(uri)
    if use_lora is False and (Path(local) / TRAINABLE_FILE).exists():
        raise ValueError(
            f"resume_from: {uri} is a LoRA checkpoint (only {TRAINABLE_FILE}, no UNet weights) and this run "
            "has use_lora=false; resume it with use_lora=true and its LoRA settings, or start fresh"
        )
    accelerator.load_state(str(local))
    return json.loads((Path(local) / STATE_FILE).read_text())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that training may change, by name: parameters with ``requires_grad``, and
    buffers (running statistics would change; SD/SDXL UNets have none, GroupNorm keeps no statistics)."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b.detach() for name, b in model.named_buffers()})
    return state


def keep_only_trainable_weights(accelerator: Any, model: torch.nn.Module) -> None:
    """Make ``save_state``/``load_state`` store only ``model``'s trainable parameters (LoRA checkpoints).

    ``model`` is the unwrapped module given to ``accelerator.prepare``. Its frozen parameters (the base UNet
    under a LoRA adapter) are not written: on resume they come from the pretrained model again, exactly
    as at the start of the run, so :func:`trainable_state`, the optimizer, the scheduler and the RNG
    states are the whole of what a resumed run needs to continue bit for bit. Same hook pattern as
    diffusers' LoRA training scripts (``register_save_state_pre_hook``). A checkpoint written before this
    existed (the whole UNet in ``model.safetensors``) still loads, through accelerate's own path.
    """
    from accelerate.utils import extract_model_from_parallel

    def is_ours(candidate: Any) -> bool:
        return extract_model_from_parallel(candidate) is model

    def save_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        from safetensors.torch import save_file

        index = next((i for i, m in enumerate(models) if is_ours(m)), None)
        if index is None:
            return
        if len(weights) != len(models):
            # accelerate 1.15 saves FSDP and DeepSpeed models itself and hands the hooks no weights, so the
            # frozen base would be written anyway and load_state could not restore the adapter alone.
            raise ValueError(
                f"LoRA checkpoint at {output_dir}: accelerate ({accelerator.distributed_type}) saved the model "
                f"itself ({len(weights)} weights for {len(models)} models); LoRA training supports the ddp "
                "strategy (or one process) only"
            )
        # accelerate writes weights[i] for models[i]; dropping ours keeps the frozen base out of the files.
        # (``models`` is the accelerator's own list here: it must stay as it is.)
        weights.pop(index)
        if accelerator.is_main_process:
            tensors = {k: v.contiguous().cpu() for k, v in trainable_state(model).items()}
            save_file(tensors, os.path.join(output_dir, TRAINABLE_FILE))

    def load_hook(models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        path = Path(input_dir) / TRAINABLE_FILE
        index = next((i for i, m in enumerate(models) if is_ours(m)), None)
        if index is None or not path.exists():
            return
        # ``models`` is load_state's list of what it will load next: ours is restored here instead.
        models.pop(index)
        saved = load_file(str(path))
        expected = set(trainable_state(model))
        if set(saved) != expected:
            missing, extra = sorted(expected - set(saved)), sorted(set(saved) - expected)
            raise ValueError(
                f"{path}: the checkpoint's trainable tensors do not match this run's (missing {len(missing)}, "
                f"e.g. {missing[:3]}; unexpected {len(extra)}, e.g. {extra[:3]}); resume with the same "
                "use_lora, lora_rank and lora_target_modules the checkpoint was written with"
            )
        current = trainable_state(model)
        for name, value in saved.items():
            if current[name].shape != value.shape:
                raise ValueError(
                    f"{path}: tensor {name!r} has shape {tuple(value.shape)}, this run's "
                    f"{tuple(current[name].shape)}; resume with the same lora_rank the checkpoint was written with"
                )
        with torch.no_grad():
            for name, value in saved.items():
                current[name].copy_(value)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class PreemptionFlag:
    """Set by SIGTERM (Kubernetes' preemption notice); the loop checks it at step boundaries.

    Checking at a boundary (never checkpointing from inside the handler) keeps the saved state consistent.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: will checkpoint at the end of this step and stop", signum)
        self.requested = True

    def __enter__(self) -> PreemptionFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def staging_dir() -> Path:
    """A fresh local temp directory for building outputs before they are published."""
    return Path(tempfile.mkdtemp(dir=storage.cache_root(), prefix="stage-"))
