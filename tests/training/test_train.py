"""The training loop end to end on small data: run dir, time budget, exact resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genrec.errors import GenrecError
from genrec.runtime import bf16_is_native
from genrec.training.config import TrainConfig
from genrec.training.loop import train
from genrec.training.run import load_run

TINY = {
    "tiger": {"d_model": 32, "num_heads": 2, "d_kv": 16, "d_ff": 64, "num_encoder_layers": 1, "num_decoder_layers": 1},
    "causal": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64},
    "sasrec": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ff_size": 64},
}


def tiny_config(model: str, **overrides) -> TrainConfig:
    values = dict(model=model, model_args=TINY[model], batch_size=16, max_steps=12, eval_every=6,
                  checkpoint_every=4, warmup_steps=2, eval_users=40, beam=10, max_history=10, user_buckets=50)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("model", ["tiger", "causal", "sasrec"])
def test_run_directory(synth_ids, tmp_path, model):
    smoothing = 0.0 if model == "sasrec" else 0.1   # the generative models' code-level label smoothing
    summary = train(synth_ids, tmp_path / "run", tiny_config(model, label_smoothing=smoothing), log=lambda _: None)
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "train_log.csv", "valid_log.csv", "curves.png",
                 "train_summary.json", "last/model.safetensors", "last/optimizer.safetensors", "last/state.json"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    assert summary["steps"] == 12 and 0 <= summary["best_valid_ndcg@10"] <= 1
    loaded = load_run(run)  # the best weights load back into a fresh model
    assert loaded.kind == model
    # bf16 (the default) where matmuls have bf16 kernels, else fp32, and the run says which
    assert json.loads((run / "config.json").read_text())["train"]["bf16"] is bf16_is_native("cpu")
    valid_rows = (run / "valid_log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in valid_rows[1:]] == ["6", "12"]


def test_time_budget_is_honoured(synth_ids, tmp_path):
    budget = 12.0
    started = time.perf_counter()
    summary = train(synth_ids, tmp_path / "run", tiny_config("tiger", max_steps=10**6, time_budget_s=budget,
                                                             eval_every=25, patience=10**6), log=lambda _: None)
    wall = time.perf_counter() - started
    assert abs(wall - budget) <= 0.1 * budget, wall
    assert summary["steps"] > 25


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "genrec", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def write_toml(path, model: str, max_steps: int, **overrides):
    cfg = tiny_config(model, max_steps=max_steps, checkpoint_every=5, eval_every=10, **overrides).to_dict()
    lines = [f"{k} = {json.dumps(v)}" for k, v in cfg.items() if k != "model_args"]
    lines.append("[model_args]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in cfg["model_args"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("model", ["tiger", "causal"])
def test_sigkill_then_resume_matches_uninterrupted(synth_ids, tmp_path, model):
    # causal with random windows: a resumed run must rebuild the same windows mid-way (40 steps
    # of 16 cover several epochs of the synthetic data)
    # tiger with a weight average: it is restored too (the best weights are averaged ones)
    config = write_toml(tmp_path / "run.toml", model, max_steps=40, random_windows=model == "causal",
                        weight_average=0.9 if model == "tiger" else 0.0)
    straight = cli("train", "--data", synth_ids, "--out", tmp_path / "straight", "--config", config)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    victim = cli("train", "--data", synth_ids, "--out", tmp_path / "killed", "--config", config)
    state = tmp_path / "killed" / "last" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["step"] >= 15:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 15 <= killed_at < 40
    resumed = cli("train", "--data", synth_ids, "--out", tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    # optimizer.safetensors holds the optimizer moments, the RNG and the weight average
    for name in ("last/model.safetensors", "last/optimizer.safetensors", "model.safetensors"):
        a = load_file(str(tmp_path / "straight" / name))
        b = load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def run_or_dump_stacks(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run, but a hang fails with every process's Python stack (py-spy) instead of a bare timeout."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pids = [process.pid, *_descendants(process.pid)]
        py_spy = str(Path(sys.executable).parent / "py-spy")
        stacks = [subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
                  for pid in pids]
        for pid in pids:  # the whole tree: a surviving grandchild would hold the pipes open
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited since the listing
                pass
        stdout, stderr = process.communicate()
        pytest.fail(f"hung after {timeout} s; stacks:\n" + "\n".join(stacks) + f"\nstdout:\n{stdout[-2000:]}"
                    f"\nstderr:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _descendants(pid: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return [d for c in children for d in [c, *_descendants(c)]]


@pytest.mark.parametrize("model", ["tiger", "sasrec"])
def test_torchrun_two_replicas_stay_identical(synth_ids, tmp_path, model):
    config = write_toml(tmp_path / "run.toml", model, max_steps=6)
    env = {**os.environ, "GENREC_DUMP_REPLICA": "1", "OMP_NUM_THREADS": "1"}
    result = run_or_dump_stacks([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 "-m", "genrec", "train", "--data", str(synth_ids), "--out", str(tmp_path / "ddp"),
                                 "--config", str(config), "--threads", "1"], env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = load_file(str(tmp_path / "ddp" / "replica-0.safetensors"))
    r1 = load_file(str(tmp_path / "ddp" / "replica-1.safetensors"))
    saved = load_file(str(tmp_path / "ddp" / "last" / "model.safetensors"))  # written by rank 0
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
        assert torch.equal(r0[key], saved[key]), key
    assert json.loads((tmp_path / "ddp" / "train_summary.json").read_text())["steps"] == 6


@pytest.mark.parametrize("model", ["tiger", "sasrec"])
def test_recommend_cli(synth_ids, tmp_path, model):
    train(synth_ids, tmp_path / "run", tiny_config(model, max_steps=6), log=lambda _: None)
    out = subprocess.run([sys.executable, "-m", "genrec", "recommend", "--run", str(tmp_path / "run"),
                          "--history", "i1,i2,nope", "--k", "5", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["unknown_items"] == ["nope"]
    ids = [row["item_id"] for row in answer["items"]]
    assert len(ids) == 5 and len(set(ids)) == 5 and not {"i1", "i2"} & set(ids)  # history excluded
    scores = [row["score"] for row in answer["items"]]
    assert scores == sorted(scores, reverse=True) and all(row["title"] for row in answer["items"])
    if model == "tiger":
        assert all(row["semantic_id"].startswith("<a_") and row["semantic_id"].count("<") == 3
                   for row in answer["items"])
    if model == "tiger":   # a strided window: the CLI cuts the history where the serving runner does
        from genrec.serving.history import dataset_histories, user_index
        from genrec.serving.runner import ModelRunner, Request, RunnerConfig

        loaded = load_run(tmp_path / "run")
        histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
        user = next(u for u in sorted(histories) if len(histories[u]) % 4 == 3 and len(histories[u]) > 14)
        strided = subprocess.run([sys.executable, "-m", "genrec", "recommend", "--run", str(tmp_path / "run"),
                                  "--user", user, "--window-stride", "4", "--json"], capture_output=True, text=True)
        assert strided.returncode == 0, strided.stderr
        history = histories[user]
        runner = ModelRunner(loaded, RunnerConfig(beam=20, window_stride=4, device="cpu"))
        (items, scores), = runner.run([Request(index[user], history, k=10, exclude=history)])
        ids = loaded.dataset.items["item_id"].astype(str).to_numpy()
        answer = json.loads(strided.stdout)["items"]
        assert [row["item_id"] for row in answer] == list(ids[items])
        assert [row["score"] for row in answer] == pytest.approx(scores.tolist(), abs=1e-5)
        (_, last_ten), = runner.run([Request(index[user], history[-10:], k=10, exclude=history)])
        assert last_ten.tolist() != pytest.approx(scores.tolist(), abs=1e-3)   # len % 4 == 3: a 7-item window
    table = subprocess.run([sys.executable, "-m", "genrec", "recommend", "--run", str(tmp_path / "run"),
                            "--user", "u0"], capture_output=True, text=True)
    assert table.returncode == 0 and "top-10" in table.stdout, table.stderr
    bad = subprocess.run([sys.executable, "-m", "genrec", "recommend", "--run", str(tmp_path / "run"),
                          "--user", "nobody"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown user 'nobody'"


@pytest.mark.parametrize("values, message", [
    ({"model": "causal", "label_smoothing": 1.0}, "label_smoothing must be in"),
    ({"model": "sasrec", "label_smoothing": 0.1}, "not sasrec"),
    ({"model": "causal", "weight_average": -0.1}, "weight_average must be in"),
])
def test_config_rejects_bad_values(values, message):
    with pytest.raises(GenrecError, match=message):
        TrainConfig(**values)
