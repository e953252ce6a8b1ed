"""One training step of a bi-encoder module, run as a script by test_distributed.py (one process per rank).

Usage: python ddp_step.py OUT_DIR [biencoder | lead | lead_joint]   with WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT set as a launcher (torchrun, SLURM) sets them. Rank r trains on its slice
of a fixed global batch of 4 queries, each with a positive and 2 hard negatives; one process alone
trains on all 4. The loss and the gradients (after data-parallel averaging) are saved to
OUT_DIR/rank{RANK}-of-{WORLD_SIZE}.pt for the test to compare.

``biencoder`` trains a BiEncoderModule; ``lead`` a LEADModule distilling one layer of a frozen 2-layer
teacher into a 1-layer student (K = 1, so the layer weight is 1 and does not depend on how the
queries are split between devices); ``lead_joint`` the same with the teacher trained too.
"""

from __future__ import annotations

import functools
import os
import sys

import lightning as L
import torch
from transformers import BertConfig, BertModel

from keel.retrieval.biencoder import BiEncoderModule
from keel.retrieval.lead import LEADModule
from keel.retrieval.nn import BiEncoder

QUERIES, GROUP = 4, 3


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    query_ids = torch.randint(5, 60, (QUERIES, 6), generator=generator)
    passage_ids_tokens = torch.randint(5, 60, (QUERIES * GROUP, 8), generator=generator)
    passage_ids = torch.arange(100, 100 + QUERIES * GROUP)
    # query 3's last hard negative (on rank 1) is a copy of query 0's positive (on rank 0): the same
    # text and id, so it must be masked for query 0 across devices, and stay a negative for query 3
    passage_ids_tokens[3 * GROUP + 2] = passage_ids_tokens[0]
    passage_ids[3 * GROUP + 2] = passage_ids[0]
    query_mask = torch.ones_like(query_ids)
    query_mask[1, 4:] = 0
    passage_mask = torch.ones_like(passage_ids_tokens)
    passage_mask[4, 5:] = 0
    return {
        "query_input_ids": query_ids,
        "query_attention_mask": query_mask,
        "passage_input_ids": passage_ids_tokens,
        "passage_attention_mask": passage_mask,
        "passage_ids": passage_ids,
        "relevant_ids": passage_ids[::GROUP].clone()[:, None],
    }


def local_batch(rank: int, world: int) -> dict[str, torch.Tensor]:
    batch, per_rank = global_batch(), QUERIES // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    groups = slice(rank * per_rank * GROUP, (rank + 1) * per_rank * GROUP)
    return {k: v[groups] if k.startswith("passage") else v[rows] for k, v in batch.items()}


def bert(seed: int, layers: int = 1) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertModel(config)


def network() -> BiEncoder:
    return BiEncoder(bert(0), bert(1), temperature=0.1, learn_temperature=True)


def module(kind: str) -> BiEncoderModule:
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    if kind == "biencoder":
        return BiEncoderModule(network(), optimizer)
    if kind not in ("lead", "lead_joint"):
        raise SystemExit(f"unknown module kind {kind!r}")
    teacher = BiEncoder(bert(2, layers=2), temperature=0.2)
    return LEADModule(network(), optimizer, teacher, layers=1, train_teacher=kind == "lead_joint")


class Recorder(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # type: ignore[no-untyped-def]
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        record = {"loss": outputs["loss"].detach(), "grads": self.grads, "world_size": trainer.world_size}
        torch.save(record, self.out)


def main(out_dir: str, kind: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    out = os.path.join(out_dir, f"rank{rank}-of-{world}.pt")
    loader = torch.utils.data.DataLoader([local_batch(rank, world)], batch_size=None)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[Recorder(out)],
    )
    trainer.fit(module(kind), train_dataloaders=loader)
    if torch.distributed.is_initialized():
        # leave together: a rank that exits while gloo still holds the other's connection aborts
        # ("terminate called without an active exception")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "biencoder")
