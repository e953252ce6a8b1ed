"""Generic training tasks shared by every domain package: causal language modelling for now."""

from keel.core.tasks.callbacks import TextSamplesCallback, sample_continuations
from keel.core.tasks.causal_lm import (
    CausalLMModule,
    NonFiniteLossError,
    build_causal_lm,
    split_decay_groups,
    warmup_cosine_schedule,
)

__all__ = [
    "CausalLMModule",
    "NonFiniteLossError",
    "TextSamplesCallback",
    "build_causal_lm",
    "sample_continuations",
    "split_decay_groups",
    "warmup_cosine_schedule",
]
