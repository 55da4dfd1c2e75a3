"""Typed run configuration, loadable from TOML (`genrec train --config run.toml`)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from genrec.errors import GenrecError

BUNDLED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # tuned configs shipped with genrec

MODELS = ("tiger", "causal", "sasrec")


@dataclass
class TrainConfig:
    model: str = "tiger"
    model_args: dict = field(default_factory=dict)   # overrides of the model's own config
    seed: int = 0
    batch_size: int = 256
    grad_accumulation: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 20_000
    time_budget_s: float = 0.0       # 0 = none; the cosine schedule follows whichever budget binds
    grad_clip: float = 1.0
    weight_average: float = 0.0      # decay of an EMA of the weights used for validation and the
                                     # saved model (e.g. 0.999); 0 = the raw weights
    label_smoothing: float = 0.0     # tiger / causal: share of each code target spread over its codebook
    bf16: bool = True                # bf16 autocast: 1.7x faster TIGER steps on an AVX-512 BF16 CPU (benchmarks/train.py);
                                     # fp32, with a warning, where matmuls have no bf16 kernels (runtime.usable_bf16)
    max_history: int = 20            # items of history fed to the model
    random_windows: bool = False     # causal / sasrec: shift each epoch's history windows at random
    user_buckets: int = 2000         # TIGER's hashed user tokens (0 = none)
    eval_every: int = 500
    eval_users: int = 0              # 0 = every user of the valid split
    beam: int = 20
    patience: int = 5                # evaluations without improvement before stopping
    checkpoint_every: int = 500
    num_threads: int = 0             # 0 = leave torch's default
    device: str = "cpu"

    def __post_init__(self):
        if self.model not in MODELS:
            raise GenrecError(f"unknown model {self.model!r} (expected one of {', '.join(MODELS)})")
        for name in ("batch_size", "grad_accumulation", "max_steps", "eval_every", "beam", "checkpoint_every",
                     "max_history"):
            if getattr(self, name) < 1:
                raise GenrecError(f"{name} must be >= 1")
        if not 0.0 <= self.weight_average < 1.0:
            raise GenrecError("weight_average must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise GenrecError("label_smoothing must be in [0, 1)")
        if self.label_smoothing and self.model == "sasrec":
            raise GenrecError("label_smoothing applies to the semantic-ID models (tiger, causal), not sasrec")
        if self.lr <= 0 or self.time_budget_s < 0 or self.warmup_steps < 0:
            raise GenrecError("lr must be > 0, time_budget_s and warmup_steps >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise GenrecError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """A TOML file, or the name of a bundled config (`genrec/configs/NAME.toml`, e.g. causal-ml100k)."""
        bundled = BUNDLED_CONFIGS / f"{path}.toml"
        if not Path(path).exists() and bundled.exists():
            path = bundled
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise GenrecError(f"{path}: cannot read TOML config ({exc})") from None
        model_args = values.pop("model_args", {}) or {}
        return cls.from_dict({**values, "model_args": model_args})


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise GenrecError(f"cannot parse duration {text!r} (e.g. 90s, 10m, 1.5h)") from None
