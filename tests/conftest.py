"""Shared fixtures: real MovieLens-100K and its semantic IDs, built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m genrec ARGS` as a user would, capturing output."""
    import os

    result = subprocess.run([sys.executable, "-m", "genrec", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"genrec {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


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
