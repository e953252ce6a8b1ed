"""Wall-clock timing for benchmarks: seconds of one call, with queued CUDA work counted, and the command line."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def seconds(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes, CUDA kernels included (the device is synchronised before and after)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def command_line(argv: list[str] | None = None) -> str:
    """The command that runs this script, as a benchmark result records it: ``python <script> <args>``.

    The script's path is made relative to the working directory when it lies below it, so the
    recorded command works from a checkout's root on any machine.
    """
    script, *args = sys.argv if argv is None else argv
    path = os.path.abspath(script)
    here = os.getcwd()
    if path.startswith(here + os.sep):
        path = os.path.relpath(path, here)
    return shlex.join(["python", path, *args])


def run_facts(device: str) -> dict[str, Any]:
    """What a benchmark result records about how it ran: device, torch, cores, threads, load, command."""
    return {
        "device": device, "torch": torch.__version__, "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0], "command": command_line(),
    }  # fmt: skip


def measured_on(result: dict[str, Any], default_command: str) -> str:
    """The README line that says where and how a result of :func:`run_facts` was measured."""
    where = result["device"]
    if result.get("cpu_cores"):
        where += f" ({result['cpu_cores']} cores, {result['threads']} torch thread(s)"
        where += f", load average {result['load_average']:.1f})" if "load_average" in result else ")"
    return f"Measured on {where} with torch {result['torch']} (`{result.get('command', default_command)}`):"
