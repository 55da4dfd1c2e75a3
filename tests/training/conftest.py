from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_ids(tmp_path_factory) -> Path:
    """A small synthetic dataset with 2 x 16 semantic IDs (+ collision level)."""
    from genrec.data.prepare import PrepareConfig, prepare
    from genrec.data.synth import SynthConfig, synth
    from genrec.semantic_ids.build import IdsConfig, build_ids

    out = tmp_path_factory.mktemp("synth") / "data"
    prepare(synth(SynthConfig(items=300, users=120, seed=0)), PrepareConfig(max_history=20), out)
    build_ids(out, IdsConfig(levels=2, codebook_size=16), log=lambda _: None)
    return out
