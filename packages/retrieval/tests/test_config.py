"""The README's config builds through keel's checked instantiation."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from keel.core.instantiate import instantiate, validate
from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.data import RetrievalDataModule

CONFIG = """
model:
  _target_: keel.retrieval.biencoder.BiEncoderModule
  model:
    _target_: keel.retrieval.nn.biencoder_from_pretrained
    path: {model}
    shared: false
    pooling: cls
    learn_temperature: true
  optimizer: {{_target_: torch.optim.AdamW, _partial_: true, lr: 2.0e-5}}
data:
  _target_: keel.retrieval.data.RetrievalDataModule
  data_dir: {data}
  tokenizer: {model}
  negatives: 2
  batch_size: 2
"""


def test_config_builds_the_module_and_data(tiny_model_dir: Path, tiny_beir: Path) -> None:
    cfg = OmegaConf.create(CONFIG.format(model=tiny_model_dir, data=tiny_beir))
    validate(cfg)
    module = instantiate(cfg.model)
    data = instantiate(cfg.data)
    assert isinstance(module, BiEncoderModule)
    assert isinstance(data, RetrievalDataModule)
    assert not module.model.shared
    assert module.model.pooling == "cls"
    assert isinstance(module.configure_optimizers(), torch.optim.AdamW)
