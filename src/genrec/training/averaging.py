"""An exponential moving average of the weights (Polyak averaging), for validation and the saved
model: on small data the raw weights wander between evaluations, and their average generalises
more steadily than any single step's. With decay 0 (the default) it is off: every method does
nothing and the model keeps its raw weights."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = list(model.parameters()) if decay else []
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based); early steps average over fewer steps, so the
        average does not hold on to the random initialisation."""
        if not self.params:
            return
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own weights again after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"__average__.{i}": s.contiguous() for i, s in enumerate(self.shadow)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(tensors[f"__average__.{i}"])
