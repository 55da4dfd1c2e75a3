"""The real all-MiniLM-L6-v2 encoder, offline, and its content-hash cache."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.semantic_ids.encoder import EncoderConfig, TextEncoder

pytestmark = pytest.mark.slow


def test_encoder_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path))
    texts = ["A space opera with lasers.", "Galactic battles and starships.", "A quiet cooking show.",
             "A space opera with lasers."]
    encoder = TextEncoder(EncoderConfig(batch_size=2))
    first = encoder.encode(texts, progress=False)
    assert first.shape == (4, 384) and first.dtype == np.float32
    assert encoder.last_stats == {"texts": 4, "cache_hits": 0, "encoded": 3}  # duplicate text encoded once
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first[0] @ first[1] > first[0] @ first[2]  # meaning, not noise
    fresh = TextEncoder(EncoderConfig())
    second = fresh.encode(texts[::-1], progress=False)
    assert fresh.last_stats["cache_hits"] == 4 and fresh._model is None  # no model load on a full hit
    np.testing.assert_array_equal(second, first[::-1])
    uncached = TextEncoder(EncoderConfig(use_cache=False)).encode(texts[:1], progress=False)
    np.testing.assert_allclose(uncached[0], first[0], atol=1e-5)
