"""`genrec quickstart`: the whole pipeline on MovieLens-100K within a laptop's time budget.

prepare -> semantic IDs -> train the generative model and SASRec (bundled configs, time budgets)
-> MostPop -> evaluate all on the test split -> report (Markdown + PNGs) -> sample recommendations.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from genrec.training.config import TrainConfig


@dataclass
class QuickstartConfig:
    out: Path = Path("genrec-quickstart")
    generative: str = "causal"          # the best generative model on ML-100K valid (docs/quality.md)
    generative_minutes: float = 8.0     # training budgets: the whole run stays under 15 minutes on 2 cores
    sasrec_minutes: float = 3.0
    sample_users: tuple[str, ...] = ("1", "2")


@dataclass
class QuickstartResult:
    data: Path
    runs: list[Path]        # generative, sasrec, pop: the report's order (the first is the reference)
    report: Path
    seconds: float


def run_quickstart(config: QuickstartConfig, log: Callable[[str], None], step: Callable[[str], None],
                   evaluate_run: Callable[[Path], dict]) -> QuickstartResult:
    """The pipeline; `step` announces a stage, `evaluate_run` evaluates a run on test (the CLI's)."""
    from genrec.data.movielens import load_ml100k_recbole
    from genrec.data.prepare import PrepareConfig, prepare
    from genrec.evaluation.recommenders import BaselineConfig, fit_baseline
    from genrec.evaluation.report import write_report
    from genrec.semantic_ids.build import IdsConfig, build_ids
    from genrec.training.loop import train

    started = time.perf_counter()
    data, runs_dir = config.out / "data" / "ml-100k", config.out / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)  # a fresh start, not a resume of an earlier quickstart
    step("1/6  prepare MovieLens-100K")
    prepare(load_ml100k_recbole(), PrepareConfig(), data, overwrite=True)
    step("2/6  semantic IDs (sentence encoder + co-occurrence vectors + residual k-means)")
    build_ids(data, IdsConfig(collaborative_weight=0.5), log=log)  # docs/quality.md, rows 21-24
    runs = []
    for i, (model, minutes) in enumerate(((config.generative, config.generative_minutes),
                                          ("sasrec", config.sasrec_minutes)), start=3):
        step(f"{i}/6  train {model} for {minutes:g} min")
        train_config = replace(TrainConfig.from_toml(f"{model}-ml100k"), time_budget_s=minutes * 60)
        run = runs_dir / model
        train(data, run, train_config, log=log)
        runs.append(run)
    runs.append(fit_baseline(data, runs_dir / "pop", BaselineConfig(model="pop")))
    step("5/6  evaluate on the test split (full ranking, history excluded)")
    for run in runs:
        evaluate_run(run)
    step("6/6  report")
    report = write_report(runs, "test", config.out / "report")
    return QuickstartResult(data, runs, report, time.perf_counter() - started)
