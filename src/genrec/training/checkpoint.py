"""Run directories: weights as safetensors, everything else as JSON; written atomically; no pickle.

RUN/config.json            what was trained on what (enough to rebuild the model)
RUN/model.safetensors      best weights by validation NDCG@10
RUN/last/                  latest training state for --resume: model, optimizer, state.json
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genrec.errors import GenrecError
from genrec.files import atomic_directory, atomic_write_json


def save_weights(path: Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # Tied tensors (lm_head = embeddings) must be stored once; safetensors refuses shared storage.
    seen: dict[int, str] = {}
    for key in list(state):
        ptr = model.state_dict()[key].data_ptr()
        if ptr in seen:
            del state[key]
        else:
            seen[ptr] = key
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise GenrecError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, values in sd["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(run: Path, model, optimizer, state: dict, average) -> None:
    """Write RUN/last atomically (a temp dir renamed over the old one); `average`: the run's
    WeightAverage (saved beside the optimizer state; nothing when it is off)."""
    with atomic_directory(run / "last", overwrite=True) as tmp:
        save_weights(tmp / "model.safetensors", model)
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["__torch_rng__"] = torch.get_rng_state()
        tensors.update(average.state())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "state.json", {**state, "optimizer": meta})


def load_training_state(run: Path, model, optimizer, average) -> dict:
    last = run / "last"
    if not (last / "state.json").exists():
        raise GenrecError(f"{run}: nothing to resume (no last/state.json)")
    state = json.loads((last / "state.json").read_text())
    load_weights(last / "model.safetensors", model)
    tensors = load_file(str(last / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("__torch_rng__"))
    average.load({k: tensors.pop(k) for k in [k for k in tensors if k.startswith("__average__.")]})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    return state


def write_run_config(run: Path, train_config, model_kind: str, model_config, data_dir: Path, extra: dict) -> None:
    from genrec import __version__

    atomic_write_json(run / "config.json", {
        "genrec_version": __version__, "model": model_kind, "model_config": asdict(model_config),
        "train": train_config.to_dict(), "data_dir": str(Path(data_dir).resolve()), **extra})
