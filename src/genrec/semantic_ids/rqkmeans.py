"""Residual-quantization k-means (the default quantizer): per level, faiss k-means on the
residuals, assign each vector to its nearest centroid, subtract, go on.

Equivalent to faiss' ResidualQuantizer with beam size 1 (its default beam 5 is about 3x slower
for little gain on this task).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.errors import GenrecError


@dataclass
class RQKMeansConfig:
    levels: int = 3
    codebook_size: int = 256
    niter: int = 20
    # faiss trains each level on at most k * this many points (a random sample). 256 keeps the
    # 1M-item build fast while every centroid still sees hundreds of points.
    max_points_per_centroid: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.levels < 1 or self.codebook_size < 2:
            raise GenrecError("RQ-KMeans needs levels >= 1 and codebook_size >= 2")


class RQKMeans:
    def __init__(self, config: RQKMeansConfig, centroids: np.ndarray | None = None):
        self.config = config
        self.centroids = centroids  # (levels, codebook_size, dim) float32; unused rows are +inf-far

    def fit(self, vectors: np.ndarray, in_place: bool = False, progress=None) -> np.ndarray:
        """Train every level and return codes (n, levels) int32. With `in_place` the input is
        overwritten by its final residual (saves a copy of the data at 1M+ items)."""
        import faiss

        cfg = self.config
        residual = np.ascontiguousarray(vectors, dtype=np.float32)
        if not in_place:
            residual = residual.copy()
        n, dim = residual.shape
        k = min(cfg.codebook_size, n)  # a tiny catalog cannot fill a 256-code level
        self.centroids = np.zeros((cfg.levels, cfg.codebook_size, dim), dtype=np.float32)
        codes = np.empty((n, cfg.levels), dtype=np.int32)
        for level in range(cfg.levels):
            kmeans = faiss.Kmeans(dim, k, niter=cfg.niter, seed=cfg.seed + level, verbose=False,
                                  max_points_per_centroid=cfg.max_points_per_centroid,
                                  min_points_per_centroid=1)
            kmeans.train(residual)
            centers = kmeans.centroids.astype(np.float32)
            self.centroids[level, :k] = centers
            # Unused slots (k < codebook_size) are placed far away so they are never chosen.
            self.centroids[level, k:] = np.float32(1e6)
            codes[:, level] = self._assign_and_subtract(residual, centers)
            if progress is not None:
                progress(level + 1)
        return codes

    @staticmethod
    def _assign_and_subtract(residual: np.ndarray, centers: np.ndarray, chunk: int = 65536) -> np.ndarray:
        import faiss

        index = faiss.IndexFlatL2(centers.shape[1])
        index.add(centers)
        assign = np.empty(len(residual), dtype=np.int32)
        for start in range(0, len(residual), chunk):  # chunks keep the temporaries small
            block = residual[start:start + chunk]
            _, nearest = index.search(block, 1)
            assign[start:start + chunk] = nearest[:, 0]
            block -= centers[nearest[:, 0]]
        return assign

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes of new vectors against the trained centroids (cold start); never retrains."""
        if self.centroids is None:
            raise GenrecError("RQ-KMeans is not trained")
        residual = np.array(vectors, dtype=np.float32, copy=True)
        codes = np.empty((len(residual), self.config.levels), dtype=np.int32)
        for level in range(self.config.levels):
            codes[:, level] = self._assign_and_subtract(residual, self.centroids[level])
        return codes

    def state(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids}

    @classmethod
    def from_state(cls, config: RQKMeansConfig, state: dict[str, np.ndarray]) -> "RQKMeans":
        return cls(config, centroids=state["centroids"])
