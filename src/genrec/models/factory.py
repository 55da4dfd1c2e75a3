"""Build any of the three models from a run's settings, and compute its training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.causal import CausalConfig, CausalLM
from genrec.models.sasrec import SASRec, SASRecConfig
from genrec.models.tiger import Tiger, TigerConfig


def model_config(kind: str, model_args: dict, vocab_size: int, num_items: int, max_history: int):
    if kind == "tiger":
        return TigerConfig(vocab_size=vocab_size, **model_args)
    if kind == "causal":
        return CausalConfig(vocab_size=vocab_size, **model_args)
    return SASRecConfig(num_items=num_items, max_len=max_history, **model_args)


def build_model(kind: str, config) -> nn.Module:
    return {"tiger": Tiger, "causal": CausalLM, "sasrec": SASRec}[kind](config)


def loss_fn(kind: str, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if kind == "tiger":
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten())
    if kind == "causal":
        logits = model(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)
    return model(batch["tokens"], batch["targets"])  # through forward, so DDP syncs the gradients


def non_embedding_params(model: nn.Module) -> int:
    """P in the FLOP estimate 2·P per token: every parameter outside embedding tables."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embeddings
