"""Launching a script as several local processes of one torch.distributed job, for multi-rank tests.

Each rank is a separate Python process with the environment variables ``torch.distributed`` (env://)
and Lightning's external-launch detection read: ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK`` and ``NODE_RANK``, with one CPU thread each so that two ranks share a 2-core
machine without thrashing. Variables that would make a rank believe it belongs to another job (a
keel run folder, torchrun's or SLURM's ids) are removed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_FOREIGN_JOB_VARIABLES = ("KEEL_RUN_DIR", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    world_size: int = 2,
    env: Mapping[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start ``python script *args`` once per rank of a ``world_size``-process job on this machine.

    Args:
        script: The worker script; it reads its rank from ``RANK``.
        args: Its command-line arguments (the same for every rank).
        world_size: Processes to start.
        env: Extra environment variables for every rank (``DS_ACCELERATOR=cpu`` ...).

    Returns:
        The processes, rank order, with stdout and stderr merged into one text pipe.
    """
    base = {key: value for key, value in os.environ.items() if key not in _FOREIGN_JOB_VARIABLES}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world_size))
    base.update(NODE_RANK="0", OMP_NUM_THREADS="1", **(env or {}))
    return [
        subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]


def wait_ranks(procs: Sequence[subprocess.Popen[str]], timeout: float = 280) -> list[str]:
    """Wait for every rank; fail with the end of a failed rank's output. Returns each rank's output.

    Raises:
        AssertionError: If a rank exits non-zero (pytest shows the last 3,000 characters of its output).
        subprocess.TimeoutExpired: If a rank runs past ``timeout`` seconds (all ranks are killed).
    """
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:  # a hung collective would otherwise keep the other ranks alive
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{output[-3000:]}"
    return outputs


def run_ranks(
    script: str | os.PathLike[str] | Path,
    args: Sequence[str] = (),
    world_size: int = 2,
    env: Mapping[str, str] | None = None,
    timeout: float = 280,
) -> list[str]:
    """:func:`launch_ranks` then :func:`wait_ranks`: run a multi-rank job to its end."""
    return wait_ranks(launch_ranks(script, args, world_size, env), timeout)
