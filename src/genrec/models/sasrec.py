"""SASRec (Kang & McAuley, 2018), the baseline every generative recommender is compared with,
in its strong form: causal self-attention over item ids, trained with full-softmax
cross-entropy over all items (not the original sampled BCE), tied input/output item embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SASRecConfig:
    num_items: int
    max_len: int = 50
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    ff_size: int = 256
    dropout: float = 0.2

    def __post_init__(self):
        if self.num_items < 1 or self.hidden_size % self.num_heads:
            raise ValueError("SASRec needs num_items >= 1 and hidden_size divisible by num_heads")


class SASRec(nn.Module):
    PAD = 0  # item index i is token i + 1

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=self.PAD)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden_size)
        layer = nn.TransformerEncoderLayer(config.hidden_size, config.num_heads, config.ff_size, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) of item index + 1, left-padded with 0 -> hidden states (B, T, d); with
        `targets`, the training loss instead (so DistributedDataParallel sees it as forward)."""
        if targets is not None:
            return self.loss(tokens, targets)
        t = tokens.shape[1]
        if t > self.config.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.config.max_len}")
        x = self.item_emb(tokens) * self.config.hidden_size ** 0.5
        x = self.dropout(x + self.pos_emb(torch.arange(t, device=tokens.device)))
        # Blocked = the future or a padded key; every position may always see itself, so padded
        # rows stay finite (a NaN there would leak into real rows through 0 * NaN).
        idx = torch.arange(t, device=tokens.device)
        blocked = (idx[None, :] > idx[:, None])[None] | (tokens == self.PAD)[:, None, :]
        blocked &= ~torch.eye(t, dtype=torch.bool, device=tokens.device)[None]
        x = self.blocks(x, mask=blocked.repeat_interleave(self.config.num_heads, dim=0))
        return self.norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over all items (index 0..num_items-1) by dot product with the item table."""
        return hidden @ self.item_emb.weight[1:].T

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Full-softmax cross-entropy at every non-padded position; targets are item indices,
        -100 where ignored."""
        logits = self.item_logits(self(tokens))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, num_items) scores for the next item after each (left-padded) history."""
        return self.item_logits(self(tokens)[:, -1])
