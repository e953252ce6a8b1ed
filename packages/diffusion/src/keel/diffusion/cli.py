"""``keel diffusion <verb>``: the diffusion package's commands (entry point ``keel.commands``).

Verbs::

    keel diffusion nuwa-bench --frames N [--tiny] [--device cpu|cuda]
"""

from __future__ import annotations

from collections.abc import Sequence

from keel.core.errors import ConfigError

USAGE = "usage: keel diffusion nuwa-bench --frames N [--tiny] [--device DEVICE]"


def main(argv: Sequence[str]) -> int:
    """Dispatch ``keel diffusion`` verbs; a bad verb is a one-line usage error."""
    argv = list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb == "nuwa-bench":
        from keel.diffusion.nuwa_xl.bench import main as nuwa_bench

        return nuwa_bench(rest)
    raise ConfigError(f"unknown verb {verb!r} for keel diffusion; {USAGE}")
