"""Building blocks shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Scale-only layer norm (T5's and Llama's): no mean subtraction, no bias, fp32 statistics."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32 and not torch.is_grad_enabled():
            # Inference in fp32: torch's own kernel gives the same values bit for bit in one op
            # instead of eight, which small eager prefills pay per op (a prefix-cache hit: -7 %).
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
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
    if logits.dtype == torch.float32:
        own = logits[..., block]
    else:
        with torch.autocast(hidden.device.type, enabled=False):
            own = hidden.float() @ weight[block].float().T
    if torch.compiler.is_compiling():
        # The normaliser by parts (before, inside, after the block): inductor reduces over the
        # bf16 logits in one pass and writes nothing vocabulary-wide (2x faster than the patched
        # log_softmax below, which is 1.3x faster than this in eager).
        parts = torch.stack([torch.logsumexp(logits[..., :block.start].float(), -1), torch.logsumexp(own, -1),
                             torch.logsumexp(logits[..., block.stop:].float(), -1)], -1)
        return own - torch.logsumexp(parts, -1, keepdim=True)
    if logits.dtype != torch.float32:
        logits = logits.float()
        logits[..., block] = own
    return torch.log_softmax(logits, dim=-1)[..., block]
