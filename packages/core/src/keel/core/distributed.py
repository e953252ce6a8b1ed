"""Deciding the run directory once for all processes of a run.

There are three ways a ``keel run`` process can start:

1. **Alone**, or as rank 0 before Lightning launches the other local ranks itself (``ddp`` with
   ``devices: 2``): the process derives the config, creates the run directory, and exports
   ``KEEL_RUN_DIR``. Lightning starts the other ranks by re-running the same command with that
   environment, so they find the run directory and read ``resolved.yaml`` from it.
2. **As a child** of such a launch: ``KEEL_RUN_DIR`` is set; the config is read from the run
   directory, never re-derived (a re-derived config could differ: a new timestamp, ``resume=last``
   finding another run, a file edited in between).
3. **Under an external launcher** that starts every rank at once (``torchrun``, SLURM's ``srun``, on
   one or several nodes): no process can pass an environment to the others, so keel initialises
   the default process group early and rank 0 broadcasts the run directory and the resolved
   config text. Lightning and DeepSpeed reuse an initialised process group instead of creating one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RUN_DIR_ENV = "KEEL_RUN_DIR"


@dataclass(frozen=True)
class LaunchContext:
    """How this process was started.

    Attributes:
        rank: Global rank of this process (0 when alone).
        world_size: Number of processes started by the external launcher (1 when alone).
        external: Whether an external launcher (torchrun, SLURM) started all ranks at once.
        inherited_run_dir: The run directory exported by the rank-0 parent, when this is a child.
    """

    rank: int
    world_size: int
    external: bool
    inherited_run_dir: str | None


def _slurm_environment():  # type: ignore[no-untyped-def]
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment() if SLURMEnvironment.detect() else None


def launch_context() -> LaunchContext:
    """Inspect the environment to tell how this process was launched."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if (
        inherited
        and os.environ.get("LOCAL_RANK") not in (None, "0")
        or inherited
        and os.environ.get("NODE_RANK", "0") != "0"
    ):
        return LaunchContext(int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))), 1, False, inherited)
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return LaunchContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), True, None)
    slurm = _slurm_environment() if "SLURM_NTASKS" in os.environ else None
    if slurm is not None and slurm.world_size() > 1:
        return LaunchContext(slurm.global_rank(), slurm.world_size(), True, None)
    return LaunchContext(0, 1, False, None)


def _init_process_group(context: LaunchContext) -> None:
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    slurm = _slurm_environment()
    if slurm is not None:  # SLURM gives no MASTER_ADDR/PORT; Lightning derives them from the node list and job id
        os.environ.setdefault("MASTER_ADDR", slurm.main_address)
        os.environ.setdefault("MASTER_PORT", str(slurm.main_port))
    # One group serves both the CPU handshake here and the GPU collectives Lightning runs later.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, init_method="env://", rank=context.rank, world_size=context.world_size)


def share_from_rank_zero(context: LaunchContext, make: callable) -> tuple[str, str]:  # type: ignore[valid-type]
    """Run ``make()`` on rank 0 only and hand its ``(run_dir, resolved_yaml)`` to every rank.

    Args:
        context: This process's launch context (external launches only).
        make: Creates the run directory and returns ``(run_dir, resolved_yaml_text)``.
    """
    import torch.distributed as dist

    _init_process_group(context)
    payload: list[object] = [None]
    error: list[object] = [None]
    if context.rank == 0:
        try:
            payload = [make()]
        except Exception as err:  # tell the other ranks to stop instead of leaving them waiting
            error = [f"{type(err).__name__}: {err}"]
            dist.broadcast_object_list([None, error[0]], src=0)
            raise
    shared: list[object] = [payload[0], error[0]]
    dist.broadcast_object_list(shared, src=0)
    if shared[1] is not None:
        raise SystemExit(f"rank {context.rank}: rank 0 failed to prepare the run ({shared[1]})")
    run_dir, text = shared[0]  # type: ignore[misc]
    return run_dir, text
