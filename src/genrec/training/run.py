"""Load a trained run for inference: model + data + trie, ready for `recommend_batch`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genrec.data.dataset import Dataset, load_dataset
from genrec.decoding.trie_torch import TorchTrie
from genrec.errors import GenrecError
from genrec.models.factory import build_model, model_config
from genrec.training.checkpoint import load_weights
from genrec.training.config import TrainConfig
from genrec.training.data import SequenceData


@dataclass
class LoadedRun:
    path: Path
    kind: str
    config: TrainConfig
    model: torch.nn.Module
    dataset: Dataset
    data: SequenceData
    trie: TorchTrie | None
    table: object | None


def load_run(run: str | Path, weights: str = "model.safetensors") -> LoadedRun:
    run = Path(run)
    if not (run / "config.json").exists():
        raise GenrecError(f"{run} is not a run directory (no config.json); train one with `genrec train`")
    meta = json.loads((run / "config.json").read_text())
    config = TrainConfig.from_dict(meta["train"])
    dataset = load_dataset(meta["data_dir"])
    table = None
    if config.model != "sasrec":
        from genrec.semantic_ids.build import load_ids

        table = load_ids(meta["data_dir"]).table
    data = SequenceData(dataset, config.model, config.max_history, table, config.user_buckets)
    mcfg = model_config(config.model, dict(config.model_args), data.vocab.size if data.vocab else 0,
                        dataset.num_items, config.max_history)
    saved = meta["model_config"]
    model = build_model(config.model, type(mcfg)(**saved))
    load_weights(run / weights, model)
    model.eval()
    trie = TorchTrie(table.trie) if table is not None else None
    return LoadedRun(run, config.model, config, model, dataset, data, trie, table)
