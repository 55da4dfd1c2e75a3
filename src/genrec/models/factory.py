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


def loss_fn(kind: str, model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0,
            token_levels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy; for the generative models optionally label-smoothed within
    each target's own codebook (`token_levels`: the level of every token id, -1 elsewhere)."""
    if kind == "sasrec":
        return model(batch["tokens"], batch["targets"])  # through forward, so DDP syncs the gradients
    if kind == "tiger":
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
    else:
        logits = model(batch["input_ids"], batch["attention_mask"])
    return code_cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), label_smoothing, token_levels)


def code_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
                       token_levels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, V) logits, (N,) labels (-100 = ignored). With smoothing s the target is 1 - s on the
    label and s spread evenly over the label's level block (torch's own label_smoothing would
    spread it over the whole vocabulary: user tokens and the other levels' codes too)."""
    if smoothing == 0.0:  # the default: no copy of the kept rows, torch skips the ignored ones
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)
    keep = labels != -100
    logits, labels = logits[keep].float(), labels[keep]
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(1, labels[:, None])[:, 0]
    group = token_levels + 1                                                   # 0 = not a code
    block_sums = log_probs.new_zeros(len(labels), int(group.max()) + 1).index_add_(1, group, log_probs)
    label_group = group[labels]
    spread = -block_sums.gather(1, label_group[:, None])[:, 0] / torch.bincount(group)[label_group]
    return ((1.0 - smoothing) * nll + smoothing * spread).mean()


def non_embedding_params(model: nn.Module) -> int:
    """P in the FLOP estimate 2·P per token: every parameter outside embedding tables."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embeddings
