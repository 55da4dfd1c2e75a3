"""Shared fixtures: real MovieLens-100K and its semantic IDs, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m genrec ARGS` as a user would, capturing output."""
    result = subprocess.run([sys.executable, "-m", "genrec", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"genrec {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def pytest_configure(config):
    # Two pytest-xdist workers share the two cores: one torch thread each, not two apiece
    # contending (most of the suite's time is torch.compile, single-threaded anyway).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> Path:
    from genrec.data.movielens import load_ml100k_recbole
    from genrec.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    prepare(load_ml100k_recbole(), PrepareConfig(), out)
    return out


@pytest.fixture(scope="session")
def ml100k_ids(ml100k_dir) -> Path:
    """ML-100K with semantic IDs built through the real CLI (real encoder, real faiss)."""
    run_cli("ids", "build", "--data", ml100k_dir)
    return ml100k_dir


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
