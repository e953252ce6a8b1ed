"""Checkpoints: atomic writes, safe loads, finding what to resume from, and safetensors export.

* :class:`AtomicCheckpointIO` writes to a temporary file in the same folder, flushes it to disk
  and renames it over the target, so a process killed mid-write leaves either the previous
  complete file or none, never a truncated one. It loads with ``weights_only=True``.
* :func:`resolve_resume` turns ``resume=<run dir | checkpoint | last>`` into a checkpoint path and
  checks that the file is readable before any process starts.
* :func:`export_safetensors` writes the weights of a run's checkpoint as safetensors.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from keel.core.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a partially written file behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file and an atomic rename."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(temp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            if temp.exists():
                temp.unlink()
        _fsync_dir(target.parent)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
        return load_checkpoint(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Remove a checkpoint file, ignoring one that is already gone."""
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every filesystem allows opening a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``.

    Raises:
        CheckpointError: If the file is missing, truncated, or holds objects that are not plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:160]
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason})") from err
    except Exception as err:  # the weights-only unpickler refuses anything but plain data
        reason = " ".join(str(err).split())[:160]
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({reason})") from err


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a DeepSpeed checkpoint folder (as Lightning's DeepSpeed strategy writes them)."""
    return path.is_dir() and ((path / "latest").is_file() or (path / "checkpoint").is_dir())


def latest_run(runs_dir: Path, experiment: str, exclude: Path | None = None) -> Path | None:
    """The most recent run directory of ``experiment`` that holds a ``last`` checkpoint."""
    folder = runs_dir / experiment
    if not folder.is_dir():
        return None
    candidates = sorted((p for p in folder.iterdir() if p.is_dir() and p != exclude), key=lambda p: p.name)
    for run in reversed(candidates):
        if (run / CHECKPOINT_DIR / LAST).exists():
            return run
    return None


def resolve_resume(spec: str, runs_dir: Path, experiment: str) -> Path:
    """Turn ``resume=<run dir | checkpoint | last>`` into a checkpoint path and check it can be read.

    Args:
        spec: ``last``, a run directory, or a checkpoint file (or DeepSpeed checkpoint folder).
        runs_dir: The root of all runs.
        experiment: The experiment name, used to find its latest run for ``last``.

    Raises:
        CheckpointError: If nothing to resume from is found or the checkpoint is unreadable.
    """
    if spec == "last":
        run = latest_run(runs_dir, experiment)
        if run is None:
            raise CheckpointError(f"resume=last: no earlier run of '{experiment}' with a checkpoint under {runs_dir}")
        path = run / CHECKPOINT_DIR / LAST
    else:
        path = Path(spec)
        if path.is_dir() and not is_deepspeed_checkpoint(path):
            for candidate in (path / CHECKPOINT_DIR / LAST, path / LAST):
                if candidate.exists():
                    path = candidate
                    break
            else:
                raise CheckpointError(f"resume: {spec} holds no {CHECKPOINT_DIR}/{LAST}")
        elif not path.exists():
            raise CheckpointError(f"resume: checkpoint not found: {spec}")
    if path.is_file():
        load_checkpoint(path)  # fail now, with one line, rather than after processes have started
    return path.resolve()


def export_safetensors(checkpoint: Path, out: Path, prefix: str = "model.") -> Path:
    """Write the weights of a Lightning checkpoint as a safetensors file.

    Args:
        checkpoint: A ``.ckpt`` file or a DeepSpeed checkpoint folder.
        out: The ``.safetensors`` file to write.
        prefix: A prefix stripped from every key (the LightningModule's attribute holding the network),
            so the file loads straight into the plain network. Keys without it are kept as they are.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    if is_deepspeed_checkpoint(checkpoint):
        from lightning.pytorch.utilities.deepspeed import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
        meta = {"source": str(checkpoint)}
    else:
        loaded = load_checkpoint(checkpoint)
        state = loaded.get("state_dict", loaded)
        meta = {"source": str(checkpoint), "global_step": str(loaded.get("global_step", ""))}
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        # clone: tied weights share storage, which safetensors refuses to write twice
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    if not tensors:
        raise CheckpointError(f"{checkpoint} holds no tensors to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(temp), metadata=meta)
    os.replace(temp, out)
    return out


class SkipsFrozenWeights:
    """Mixin for a LightningModule holding frozen networks that are rebuilt from their own folders.

    A teacher or a generator loaded from a local model folder is not trained, so writing it into
    every checkpoint only multiplies the file size. ``state_dict`` leaves out the keys under
    ``frozen_prefixes``; ``load_state_dict`` does not expect them, and still refuses any other
    missing or unexpected key when ``strict``. Put it before the LightningModule base class.
    """

    frozen_prefixes: tuple[str, ...] = ()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Every entry except those of the frozen networks."""
        state = super().state_dict(*args, **kwargs)  # type: ignore[misc]
        return {k: v for k, v in state.items() if not k.startswith(self.frozen_prefixes)}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load the trained weights; the frozen networks' keys are neither expected nor required."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)  # type: ignore[misc]
        if strict:
            missing = [k for k in result.missing_keys if not k.startswith(self.frozen_prefixes)]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        return result
