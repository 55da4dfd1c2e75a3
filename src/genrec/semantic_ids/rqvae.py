"""RQ-VAE (TIGER's quantizer): an MLP autoencoder whose latent is quantized by a stack of
residual codebooks, trained with reconstruction + codebook + commitment losses.

Collapse (all items on a few codes) is what goes wrong in practice, so codebooks start from
k-means on the first latents and codes unused during an epoch are restarted on random residuals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from genrec.errors import GenrecError


@dataclass
class RQVAEConfig:
    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden: tuple[int, ...] = field(default_factory=lambda: (512, 256, 128))
    epochs: int = 300
    batch_size: int = 1024
    lr: float = 1e-3
    beta: float = 0.25          # commitment weight
    seed: int = 0

    def __post_init__(self):
        if self.levels < 1 or self.codebook_size < 2 or self.latent_dim < 1:
            raise GenrecError("RQ-VAE needs levels >= 1, codebook_size >= 2 and latent_dim >= 1")
        self.hidden = tuple(self.hidden)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, config: RQVAEConfig, input_dim: int):
        super().__init__()
        self.config, self.input_dim = config, input_dim
        self.encoder = _mlp([input_dim, *config.hidden, config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *reversed(config.hidden), input_dim])
        self.codebooks = nn.Parameter(torch.zeros(config.levels, config.codebook_size, config.latent_dim))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns (codes (n, levels), quantized latent, codebook+commitment loss, residual per level)."""
        residual, quantized = z, torch.zeros_like(z)
        codes, residuals, loss = [], [], z.new_zeros(())
        for level in range(self.config.levels):
            book = self.codebooks[level]
            idx = torch.cdist(residual, book).argmin(dim=1)
            chosen = book[idx]
            residuals.append(residual.detach())
            loss = loss + ((residual.detach() - chosen) ** 2).mean() + \
                self.config.beta * ((residual - chosen.detach()) ** 2).mean()
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(idx)
        # Straight-through: the decoder's gradient reaches the encoder unchanged.
        quantized = z + (quantized - z).detach()
        return torch.stack(codes, dim=1), quantized, loss, residuals

    @torch.no_grad()
    def encode(self, vectors: np.ndarray) -> np.ndarray:
        self.eval()
        z = self.encoder(torch.from_numpy(np.asarray(vectors, dtype=np.float32)))
        return self.quantize(z)[0].numpy().astype(np.int32)

    def _kmeans_init(self, z: torch.Tensor) -> None:
        from genrec.semantic_ids.rqkmeans import RQKMeans, RQKMeansConfig

        rq = RQKMeans(RQKMeansConfig(levels=self.config.levels, codebook_size=self.config.codebook_size,
                                     seed=self.config.seed))
        rq.fit(z.detach().numpy())
        centroids = torch.from_numpy(rq.centroids)
        far = centroids.abs() >= 1e5  # slots k-means could not fill: restart them from data
        fill = z[torch.randint(0, len(z), (int(far.any(-1).sum()),))]
        centroids[far.any(-1)] = fill.detach()
        self.codebooks.data.copy_(centroids)

    def fit(self, vectors: np.ndarray, progress=None) -> dict[str, float]:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        data = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
        n = len(data)
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=1e-4)
        with torch.no_grad():
            self._kmeans_init(self.encoder(data[torch.randperm(n, generator=gen)[:max(cfg.batch_size, 4096)]]))
        stats: dict[str, float] = {}
        for epoch in range(cfg.epochs):
            self.train()
            usage = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.long)
            order = torch.randperm(n, generator=gen)
            total = recon_total = 0.0
            for start in range(0, n, cfg.batch_size):
                batch = data[order[start:start + cfg.batch_size]]
                z = self.encoder(batch)
                codes, zq, q_loss, residuals = self.quantize(z)
                recon = ((self.decoder(zq) - batch) ** 2).mean()
                loss = recon + q_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for level in range(cfg.levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=cfg.codebook_size)
                total += float(loss.detach()) * len(batch)
                recon_total += float(recon.detach()) * len(batch)
            self._restart_dead_codes(usage, residuals, gen)
            stats = {"loss": total / n, "recon": recon_total / n,
                     "dead_codes": int((usage == 0).sum()), "epoch": epoch + 1}
            if progress is not None:
                progress(stats)
        return stats

    @torch.no_grad()
    def _restart_dead_codes(self, usage: torch.Tensor, residuals: list[torch.Tensor], gen) -> None:
        for level, res in enumerate(residuals):
            dead = torch.nonzero(usage[level] == 0).flatten()
            if len(dead) and len(res):
                pick = torch.randint(0, len(res), (len(dead),), generator=gen)
                self.codebooks.data[level, dead] = res[pick]

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, config: RQVAEConfig, state: dict[str, np.ndarray], input_dim: int) -> "RQVAE":
        model = cls(config, input_dim)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        return model
