"""Top-k recommendations for a batch of (user, history) pairs, for every model kind."""

from __future__ import annotations

import numpy as np
import torch

from genrec.decoding.beam_search import constrained_beam_search
from genrec.decoding.filters import item_filter
from genrec.decoding.steppers import CausalStepper, TigerStepper
from genrec.decoding.trie_torch import TorchTrie


@torch.no_grad()
def recommend_batch(model, kind: str, data, trie: TorchTrie | None, users, histories, k: int = 10,
                    beam: int = 20, exclude_history: bool = True, exclude=None, include_only=None):
    """Returns (items (B, k) int64 numpy, -1 padded; scores (B, k) float numpy)."""
    if model.training:  # not unconditionally: eval() rewrites every module's `training`, ~1 ms a batch,
        model.eval()    # and under torch.compile a concurrent batch's guards then fail and recompile
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in data.prompt_batch(users, histories))
    deny = None
    if exclude_history or exclude is not None:
        deny = [list(h) if exclude_history else [] for h in histories]
        if exclude is not None:
            deny = [d + ([] if e is None else list(e)) for d, e in zip(deny, exclude)]
    if kind == "sasrec":
        scores = model.score(ids)
        if deny is not None or include_only is not None:
            allowed = item_filter(data.num_items, deny, include_only, device)
            rows = torch.arange(len(users), device=device)[:, None].expand_as(scores)
            items = torch.arange(data.num_items, device=device)[None].expand_as(scores)
            scores = torch.where(allowed(rows, items), scores, torch.full_like(scores, -torch.inf))
        top, idx = torch.topk(scores, min(k, data.num_items), dim=1)
        idx = torch.where(torch.isinf(top), torch.full_like(idx, -1), idx)
        return idx.cpu().numpy(), top.float().cpu().numpy()
    stepper = (TigerStepper if kind == "tiger" else CausalStepper)(model, data.vocab, ids, mask)
    result = constrained_beam_search(stepper, trie, beam=max(beam, k), k=k, n_items=data.num_items,
                                     exclude=deny, include_only=include_only)
    return result.items.cpu().numpy(), result.scores.float().cpu().numpy()


def evaluate_split(model, kind: str, data, trie, examples, k: int = 10, beam: int = 20, batch_size: int = 64,
                   exclude_history: bool = True, max_users: int = 0, progress=None):
    """Ranks of each example's target in the top-k (inf if absent), over `examples` (user_idx,
    history, target rows of valid/test.parquet)."""
    from genrec.evaluation.metrics import target_ranks

    if max_users:
        examples = examples.iloc[:max_users]
    ranks = []
    users, hist, targets = examples["user_idx"].to_numpy(), examples["history"].tolist(), examples["target"].to_numpy()
    for start in range(0, len(examples), batch_size):
        sl = slice(start, start + batch_size)
        items, _ = recommend_batch(model, kind, data, trie, users[sl], hist[sl], k=k, beam=beam,
                                   exclude_history=exclude_history)
        ranks.append(target_ranks(items, targets[sl]))
        if progress is not None:
            progress(len(items))
    return np.concatenate(ranks) if ranks else np.zeros(0)
