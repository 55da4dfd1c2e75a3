"""`genrec ids build` and `genrec ids add`: text -> vectors -> codes -> table + trie + report,
stored in `DATA/ids/`, and cold-start codes for new items against the trained quantizer."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from genrec.data.dataset import load_dataset
from genrec.errors import GenrecError
from genrec.files import atomic_directory, atomic_write_json
from genrec.semantic_ids.collaborative import CollaborativeConfig, TextToCollaborative, collaborative_vectors, mix
from genrec.semantic_ids.encoder import EncoderConfig, TextEncoder
from genrec.semantic_ids.report import code_report, plot_report
from genrec.semantic_ids.rqkmeans import RQKMeans, RQKMeansConfig
from genrec.semantic_ids.rqvae import RQVAE, RQVAEConfig
from genrec.semantic_ids.table import SemanticIdTable, add_collision_level, load_arrays, save_arrays

METHODS = ("rqkmeans", "rqvae")
MIN_UTILIZATION = 0.05  # a level using fewer codes than this has collapsed


@dataclass
class IdsConfig:
    levels: int = 3
    codebook_size: int = 256
    method: str = "rqkmeans"
    collision_capacity: int = 0     # slots of the collision level; 0 = codebook_size
    # Share of the co-occurrence (collaborative) geometry in the vectors that are quantized:
    # 0 = text only; see semantic_ids/collaborative.py.
    collaborative_weight: float = 0.0
    collaborative_dim: int = 64
    seed: int = 0
    rqvae_epochs: int = 300
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise GenrecError(f"unknown method {self.method!r} (expected one of {', '.join(METHODS)})")
        if self.levels < 1 or self.codebook_size < 2:
            raise GenrecError("need --levels >= 1 and --codebook >= 2")
        if not 0.0 <= self.collaborative_weight < 1.0:
            raise GenrecError("collaborative weight must be in [0, 1)")
        if self.collision_capacity <= 0:
            self.collision_capacity = self.codebook_size
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.codebook_size,) * self.levels + (self.collision_capacity,)


@dataclass
class SemanticIds:
    """What `ids build` wrote: the table (with its trie), the quantizer and the report."""

    config: IdsConfig
    table: SemanticIdTable
    quantizer: RQKMeans | RQVAE
    report: dict
    text_to_collaborative: TextToCollaborative | None = None  # with a collaborative weight > 0


def _quantizer(config: IdsConfig, dim: int, state: dict | None = None):
    if config.method == "rqkmeans":
        qcfg = RQKMeansConfig(levels=config.levels, codebook_size=config.codebook_size, seed=config.seed)
        return RQKMeans.from_state(qcfg, state) if state is not None else RQKMeans(qcfg)
    vcfg = RQVAEConfig(levels=config.levels, codebook_size=config.codebook_size, seed=config.seed,
                       epochs=config.rqvae_epochs)
    return RQVAE.from_state(vcfg, state, dim) if state is not None else RQVAE(vcfg, dim)


def _write(ids_dir: Path, ids: SemanticIds, meta: dict) -> None:
    ids.table.save(ids_dir / "semantic_ids.safetensors")
    ids.table.trie.save(ids_dir / "trie.safetensors")
    save_arrays(ids_dir / "quantizer.safetensors", ids.quantizer.state())
    atomic_write_json(ids_dir / "config.json", {**asdict(ids.config), **meta})
    atomic_write_json(ids_dir / "report.json", ids.report)
    if ids.text_to_collaborative is not None:
        save_arrays(ids_dir / "text_to_collaborative.safetensors", {"weights": ids.text_to_collaborative.weights})
    plot_report(ids.report, ids_dir / "report.png",
                title=f"{meta.get('dataset', '')}: {ids.config.method}, {ids.config.levels} x "
                      f"{ids.config.codebook_size} + collision level")


def build_ids(data_dir: str | Path, config: IdsConfig, log: Callable[[str], None] = print) -> SemanticIds:
    data_dir = Path(data_dir)
    dataset = load_dataset(data_dir)
    texts = dataset.items["text"].astype(str).tolist()
    started = time.perf_counter()
    encoder = TextEncoder(config.encoder)
    vectors = encoder.encode(texts)
    encode_s = time.perf_counter() - started
    log(f"encoded {len(texts)} item texts in {encode_s:.1f}s "
        f"({encoder.last_stats['cache_hits']} from cache, {encoder.last_stats['encoded']} encoded)")

    text_to_cf = None
    if config.collaborative_weight > 0:
        vectors, text_to_cf = _with_collaborative(dataset, vectors, config, log)
    started = time.perf_counter()
    quantizer = _quantizer(config, vectors.shape[1])
    if config.method == "rqkmeans":
        semantic = quantizer.fit(vectors, progress=lambda level: log(
            f"RQ-KMeans level {level}/{config.levels} done ({time.perf_counter() - started:.1f}s)"))
    else:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rqvae_epochs, desc="RQ-VAE", unit="epoch")

        def tick(stats):
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", dead=stats["dead_codes"])

        quantizer.fit(vectors, progress=tick)
        bar.close()
        semantic = quantizer.encode(vectors)
    quantize_s = time.perf_counter() - started
    try:
        codes = add_collision_level(semantic, config.collision_capacity)
    except ValueError as exc:
        raise GenrecError(str(exc)) from None
    table = SemanticIdTable(codes, config.codebook_sizes)
    report = code_report(codes, config.codebook_sizes)
    report.update({"method": config.method, "encode_seconds": encode_s, "quantize_seconds": quantize_s})
    collapsed = [lv["level"] for lv in report["levels"][:-1]
                 if lv["used"] < max(2, MIN_UTILIZATION * min(lv["capacity"], len(codes)))]
    report["collapsed_levels"] = collapsed
    if collapsed:
        log(f"WARNING: levels {collapsed} use fewer than {MIN_UTILIZATION:.0%} of their codes "
            f"(codebook collapse); the semantic IDs carry little information there")
    ids = SemanticIds(config, table, quantizer, report, text_to_cf)
    meta = {"dataset": dataset.manifest.get("dataset"), "num_items": table.num_items,
            "encoder_fingerprint": encoder.fingerprint, "embedding_dim": int(vectors.shape[1])}
    with atomic_directory(data_dir / "ids", overwrite=True) as tmp:
        _write(tmp, ids, meta)
    return ids


def _with_collaborative(dataset, text: np.ndarray, config: IdsConfig, log) -> tuple[np.ndarray, TextToCollaborative]:
    """Text vectors mixed with co-occurrence vectors from the *training* histories only."""
    cf_config = CollaborativeConfig(dim=config.collaborative_dim, seed=config.seed)
    cf, seen = collaborative_vectors(dataset.train_sequences(), dataset.num_items, cf_config)
    text_to_cf = TextToCollaborative.fit(text[seen], cf[seen], cf_config.ridge)
    cf[~seen] = text_to_cf.predict(text[~seen])
    log(f"collaborative vectors: {int(seen.sum())} items from co-occurrence, {int((~seen).sum())} "
        f"predicted from text; weight {config.collaborative_weight:g}")
    return mix(text, cf, config.collaborative_weight), text_to_cf


def load_ids(data_dir: str | Path) -> SemanticIds:
    ids_dir = Path(data_dir) / "ids"
    if not (ids_dir / "config.json").exists():
        raise GenrecError(f"{data_dir} has no semantic IDs yet; run `genrec ids build --data {data_dir}`")
    meta = json.loads((ids_dir / "config.json").read_text())
    fields = {k: meta[k] for k in IdsConfig.__dataclass_fields__ if k in meta}
    config = IdsConfig(**fields)
    table = SemanticIdTable.load(ids_dir / "semantic_ids.safetensors")
    from genrec.semantic_ids.trie import PrefixTrie

    table._trie = PrefixTrie.load(ids_dir / "trie.safetensors")
    quantizer = _quantizer(config, int(meta["embedding_dim"]), load_arrays(ids_dir / "quantizer.safetensors"))
    report = json.loads((ids_dir / "report.json").read_text())
    text_to_cf = None
    if config.collaborative_weight > 0:
        text_to_cf = TextToCollaborative(load_arrays(ids_dir / "text_to_collaborative.safetensors")["weights"])
    return SemanticIds(config, table, quantizer, report, text_to_cf)


def add_items(data_dir: str | Path, new_items: pd.DataFrame, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Cold start: give `new_items` (item_id, title, text, …) codes against the trained quantizer,
    the next free collision slot of their prefix, and a place in items.parquet and the trie.
    Existing codes never change. Returns the added rows of items.parquet."""
    data_dir = Path(data_dir)
    dataset = load_dataset(data_dir)
    ids = load_ids(data_dir)
    if ids.table.num_items != dataset.num_items:
        raise GenrecError(f"{data_dir}: items.parquet has {dataset.num_items} items but the semantic IDs "
                          f"cover {ids.table.num_items}; run `genrec ids build` again")
    known = set(dataset.items["item_id"].astype(str))
    clash = [i for i in new_items["item_id"].astype(str) if i in known]
    if clash:
        raise GenrecError(f"{len(clash)} item(s) already have semantic IDs, e.g. {clash[0]!r}")
    encoder = TextEncoder(ids.config.encoder)
    vectors = encoder.encode(new_items["text"].astype(str).tolist(), progress=len(new_items) > 1000)
    if ids.text_to_collaborative is not None:  # new items have no history: their part comes from text
        vectors = mix(vectors, ids.text_to_collaborative.predict(vectors), ids.config.collaborative_weight)
    semantic = ids.quantizer.encode(vectors)

    # Next free collision slot per prefix, continuing after the items already there.
    levels = ids.config.levels
    used: dict[tuple, int] = {}
    for row in ids.table.codes:
        key = tuple(row[:levels])
        used[key] = max(used.get(key, -1), int(row[levels]))
    slots = np.empty(len(semantic), dtype=np.int32)
    for i, row in enumerate(semantic):
        key = tuple(int(c) for c in row)
        slots[i] = used.get(key, -1) + 1
        used[key] = int(slots[i])
        if slots[i] >= ids.config.collision_capacity:
            raise GenrecError(f"item {new_items['item_id'].iloc[i]!r}: its prefix has no free collision "
                              f"slot (capacity {ids.config.collision_capacity}); rebuild the semantic IDs")
    codes = np.concatenate([ids.table.codes, np.concatenate([semantic, slots[:, None]], axis=1)])
    table = SemanticIdTable(codes, ids.config.codebook_sizes)
    report = code_report(codes, ids.config.codebook_sizes)
    report.update({k: ids.report[k] for k in ("method", "encode_seconds", "quantize_seconds") if k in ids.report})
    report["cold_start_items"] = int(len(new_items) + ids.report.get("cold_start_items", 0))

    start = dataset.num_items
    added = new_items.copy()
    added.insert(0, "item_idx", np.arange(start, start + len(added), dtype=np.int32))
    added["cold_start"] = True
    items = pd.concat([dataset.items, added], ignore_index=True)
    meta = json.loads((data_dir / "ids" / "config.json").read_text())
    meta["num_items"] = table.num_items
    with atomic_directory(data_dir / "ids", overwrite=True) as tmp:
        _write(tmp, SemanticIds(ids.config, table, ids.quantizer, report, ids.text_to_collaborative),
               {k: v for k, v in meta.items() if k not in IdsConfig.__dataclass_fields__})
        # items.parquet is replaced inside the same step so the two never disagree for long.
        tmp_items = data_dir / ".items.parquet.tmp"
        items.to_parquet(tmp_items, index=False)
        tmp_items.replace(data_dir / "items.parquet")
    log(f"added {len(added)} cold-start items (indices {start}..{start + len(added) - 1})")
    return added
