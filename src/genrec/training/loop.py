"""The one training loop for all models: AdamW, warmup + cosine, clipping, optional bf16 autocast,
gradient accumulation, validation with the real metric (constrained decoding), early stopping,
best-checkpoint keeping, a time budget, exact resume, and data parallelism under torchrun."""

from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from genrec.data.dataset import load_dataset
from genrec.decoding.recommend import evaluate_split
from genrec.decoding.trie_torch import TorchTrie
from genrec.evaluation.metrics import ranking_metrics
from genrec.files import atomic_write_json
from genrec.models.factory import build_model, loss_fn, model_config, non_embedding_params
from genrec.runtime import usable_bf16
from genrec.training.averaging import WeightAverage
from genrec.training.checkpoint import (load_training_state, save_training_state, save_weights,
                                        write_run_config)
from genrec.training.config import TrainConfig
from genrec.training.data import SequenceData


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup, then cosine to 10% of the peak over whichever budget (steps or time) binds."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = step / config.max_steps
    if config.time_budget_s:
        progress = max(progress, elapsed / config.time_budget_s)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast_flag(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.broadcast(t, src=0)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            # Rank 0 finishes later (final validation, plots); a rank that tears gloo down while
            # its peer is still working can hang the teardown, so all ranks meet first.
            dist.barrier()
            dist.destroy_process_group()


def train(data_dir: str | Path, run: str | Path, config: TrainConfig, resume: bool = False,
          log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    data_dir, run = Path(data_dir), Path(run)
    config = replace(config, bf16=usable_bf16(config.bf16, config.device.split(":")[0]))  # recorded as run
    env = Distributed(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    dataset = load_dataset(data_dir)
    table = None
    if config.model != "sasrec":
        from genrec.semantic_ids.build import load_ids

        table = load_ids(data_dir).table
    data = SequenceData(dataset, config.model, config.max_history, table, config.user_buckets)
    token_levels = torch.as_tensor(data.vocab.token_levels(), device=config.device) if data.vocab else None
    trie = TorchTrie(table.trie) if table is not None else None
    mcfg = model_config(config.model, dict(config.model_args), data.vocab.size if data.vocab else 0,
                        dataset.num_items, config.max_history)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    model = build_model(config.model, mcfg).to(config.device)
    params = non_embedding_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.98))
    state = {"step": 0, "epoch": 0, "cursor": 0, "elapsed": 0.0, "best": -1.0, "best_step": 0, "bad_evals": 0,
             "tokens": 0}
    if env.main:
        run.mkdir(parents=True, exist_ok=True)
    average = WeightAverage(model, config.weight_average)   # off (does nothing) at weight_average 0
    if resume:
        state.update(load_training_state(run, model, optimizer, average))
        log(f"resumed at step {state['step']} (epoch {state['epoch']})")
    elif env.main:
        write_run_config(run, config, config.model, mcfg, data_dir,
                         {"vocab": {"codebook_sizes": list(table.codebook_sizes), "user_buckets": config.user_buckets}
                          if table is not None else None, "non_embedding_params": params})
    wrapped = model
    if env.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    if not resume:  # dropout stream; a resumed run restored the saved one instead
        torch.manual_seed(config.seed + 1 + env.rank)

    valid = dataset.examples("valid")
    logger = _Logger(run, resume) if env.main else None
    global_batch = config.batch_size * env.world
    def epoch_order() -> np.ndarray:  # seeded per epoch, so a resumed run sees the same order
        data.new_epoch(config.seed + 7919 * (state["epoch"] + 1), config.random_windows)
        return np.random.default_rng(config.seed + state["epoch"]).permutation(len(data))

    order = epoch_order()
    autocast = (torch.autocast(device_type=config.device.split(":")[0], dtype=torch.bfloat16)
                if config.bf16 else nullcontext())
    last_eval_s, stop, loss_sum, loss_n, window_tokens, window_start = 0.0, False, 0.0, 0, 0, time.perf_counter()
    # The budget covers the whole command (setup included) so --time-budget means wall time.
    clock0 = started - state["elapsed"]

    def next_rows() -> np.ndarray:
        nonlocal order
        if state["cursor"] + global_batch > len(order):  # new epoch: a fresh, seeded permutation
            state["epoch"] += 1
            state["cursor"] = 0
            order = epoch_order()
        rows = order[state["cursor"] + env.rank * config.batch_size: state["cursor"] + (env.rank + 1) * config.batch_size]
        state["cursor"] += global_batch
        return rows

    while not stop:
        elapsed = time.perf_counter() - clock0
        if state["step"] >= config.max_steps:
            break
        if config.time_budget_s and elapsed + last_eval_s >= config.time_budget_s:
            break
        wrapped.train()
        lr = learning_rate(config, state["step"], elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        for _ in range(config.grad_accumulation):
            batch = data.batch(next_rows())
            tensors = {k: v.to(config.device) for k, v in batch.tensors.items()}
            with autocast:
                loss = loss_fn(config.model, wrapped, tensors, config.label_smoothing, token_levels)
                loss = loss / config.grad_accumulation
            loss.backward()
            loss_sum += float(loss.detach()) * config.grad_accumulation
            loss_n += 1
            window_tokens += batch.tokens * env.world
            state["tokens"] += batch.tokens * env.world
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state["step"] += 1
        average.update(state["step"])
        if env.main and (state["step"] % 20 == 0 or state["step"] == 1):
            now = time.perf_counter()
            logger.train_row(state["step"], now - clock0, lr, loss_sum / max(loss_n, 1),
                             window_tokens / max(now - window_start, 1e-9))
            if state["step"] % 100 == 0:  # a heartbeat on the console between validations
                budget = (f"{(now - clock0) / 60:.1f} of {config.time_budget_s / 60:g} min" if config.time_budget_s
                          else f"of {config.max_steps}")
                log(f"step {state['step']} ({budget}): loss {loss_sum / max(loss_n, 1):.3f}, "
                    f"{window_tokens / max(now - window_start, 1e-9):,.0f} tokens/s")
            loss_sum, loss_n, window_tokens, window_start = 0.0, 0, 0, now
        done = state["step"] >= config.max_steps
        if state["step"] % config.eval_every == 0 or done:
            t0 = time.perf_counter()
            stop = _validate(env, model, config, data, trie, valid, state, run, logger, log, average) or stop
            last_eval_s = time.perf_counter() - t0
        stop = env.broadcast_flag(stop)
        if env.main and (state["step"] % config.checkpoint_every == 0 or done or stop):
            state["elapsed"] = time.perf_counter() - clock0
            save_training_state(run, model, optimizer, state, average)

    # Final evaluation when the loop ended between evaluations (time budget).
    if env.main and state.get("last_eval_step") != state["step"]:
        _validate(env, model, config, data, trie, valid, state, run, logger, log, average)
    state["elapsed"] = time.perf_counter() - clock0
    summary = {}
    if env.main:
        save_training_state(run, model, optimizer, state, average)
        if not (run / "model.safetensors").exists():
            with average.applied():
                save_weights(run / "model.safetensors", model)
        summary = {"model": config.model, "steps": state["step"], "epochs": state["epoch"],
                   "train_seconds": round(state["elapsed"], 1), "wall_seconds": round(time.perf_counter() - started, 1),
                   "best_step": state["best_step"], "best_valid_ndcg@10": state["best"],
                   "valid": state.get("last_metrics", {}), "non_embedding_params": params,
                   "tokens_per_s": round(state["tokens"] / max(state["elapsed"], 1e-9), 1)}
        atomic_write_json(run / "train_summary.json", summary)
        logger.close()
        from genrec.training.plots import plot_curves

        plot_curves(run)
    if env.world > 1 and os.environ.get("GENREC_DUMP_REPLICA"):
        save_weights(run / f"replica-{env.rank}.safetensors", model)  # lets tests compare replicas
    env.close()
    return summary


def _validate(env, model, config, data, trie, valid, state, run, logger, log, average) -> bool:
    """Evaluate on the valid split (rank 0); keep the best weights (the averaged ones, with a
    weight average); True when patience ran out."""
    if not env.main:
        return False
    with average.applied():   # evaluated and kept: the averaged weights, when averaging is on
        ranks = evaluate_split(model, config.model, data, trie, valid, k=10, beam=config.beam,
                               max_users=config.eval_users)
        metrics = ranking_metrics(ranks, ks=(1, 5, 10))
        improved = metrics["ndcg@10"] > state["best"]
        if improved:
            save_weights(run / "model.safetensors", model)
    state["last_eval_step"] = state["step"]
    state["last_metrics"] = metrics
    if improved:
        state.update(best=metrics["ndcg@10"], best_step=state["step"], bad_evals=0)
    else:
        state["bad_evals"] += 1
    logger.eval_row(state["step"], metrics)
    log(f"step {state['step']}: valid recall@10 {metrics['recall@10']:.4f} ndcg@10 {metrics['ndcg@10']:.4f}"
        f"{' (best)' if improved else ''}")
    return state["bad_evals"] >= config.patience


class _Logger:
    """CSV (always) and TensorBoard (when installed) logs in the run dir."""

    def __init__(self, run: Path, resume: bool):
        mode = "a" if resume else "w"
        self.train_file = open(run / "train_log.csv", mode, newline="")
        self.eval_file = open(run / "valid_log.csv", mode, newline="")
        self.train_csv, self.eval_csv = csv.writer(self.train_file), csv.writer(self.eval_file)
        if not resume:
            self.train_csv.writerow(["step", "seconds", "lr", "loss", "tokens_per_s"])
            self.eval_csv.writerow(["step", "recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"))
        except ImportError:
            self.tb = None

    def train_row(self, step, seconds, lr, loss, tps):
        self.train_csv.writerow([step, f"{seconds:.2f}", f"{lr:.6g}", f"{loss:.5f}", f"{tps:.1f}"])
        self.train_file.flush()
        if self.tb:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            self.tb.add_scalar("train/tokens_per_s", tps, step)

    def eval_row(self, step, m):
        self.eval_csv.writerow([step] + [f"{m[k]:.5f}" for k in ("recall@1", "recall@5", "recall@10", "ndcg@5",
                                                                 "ndcg@10", "mrr")])
        self.eval_file.flush()
        if self.tb:
            for k in ("recall@10", "ndcg@10"):
                self.tb.add_scalar(f"valid/{k}", m[k], step)

    def close(self):
        self.train_file.close()
        self.eval_file.close()
        if self.tb:
            self.tb.close()


