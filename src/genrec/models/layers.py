"""Building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Scale-only layer norm (T5's and Llama's): no mean subtraction, no bias, fp32 statistics."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def block_log_probs(hidden: torch.Tensor, weight: torch.Tensor, block: slice) -> torch.Tensor:
    """log_softmax(hidden @ weight.T) over the whole vocabulary, returned for `block` only, in fp32.

    Under bf16 autocast the full-vocabulary matmul stays bf16 (past the block it only feeds the
    normaliser) and the block's own logits are recomputed in fp32: bf16 logits (8-bit mantissa)
    reorder near-tied beams, while an all-fp32 head costs 3x the bf16 one."""
    logits = hidden @ weight.T
    if logits.dtype != torch.float32:
        with torch.autocast(hidden.device.type, enabled=False):
            exact = hidden.float() @ weight[block].float().T
        logits = logits.float()
        logits[..., block] = exact
    return torch.log_softmax(logits, dim=-1)[..., block]
