"""Training examples and batches for each model, from a prepared dataset (+ semantic IDs).

tiger  : (user, position) pairs — encoder input [user token] + history tokens, decoder target the
         item at `position` (TIGER's sliding windows over each training sequence).
causal : windows of up to max_history + 1 items — [user token] + all their tokens, next-token
         loss on every item token.
sasrec : the same windows as item ids — predict each next item (full softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrec.data.dataset import Dataset
from genrec.models.vocab import EOS, PAD, SemanticVocab
from genrec.semantic_ids.table import SemanticIdTable

IGNORE = -100


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    tokens: int  # non-padding target tokens, for throughput figures


class SequenceData:
    def __init__(self, dataset: Dataset, model: str, max_history: int, table: SemanticIdTable | None = None,
                 user_buckets: int = 0):
        self.model, self.max_history = model, max_history
        self.num_items = dataset.num_items
        self.train = dataset.train_sequences()
        self.vocab = SemanticVocab(table.codebook_sizes, user_buckets) if table is not None else None
        self.item_tokens = self.vocab.item_tokens(table.codes) if table is not None else None
        if model == "tiger":
            users, ends = [], []
            for u, seq in enumerate(self.train):
                users.append(np.full(len(seq) - 1, u))
                ends.append(np.arange(1, len(seq)))
            self.examples = np.stack([np.concatenate(users), np.concatenate(ends)], axis=1)
        else:
            self.examples = self._windows()

    def _windows(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """(user, start, end) windows of at most max_history transitions: ending at len, len - H,
        len - 2H, ... (every transition seen once per epoch). With `rng`, each user's windows
        after the most recent one are shifted back by a random 0..H-1 items, so an epoch sees
        the same items in other contexts (the last window still ends at len: recent items matter
        most; the shift's r items are then seen twice)."""
        rows, h = [], self.max_history
        for u, seq in enumerate(self.train):
            shift = int(rng.integers(h)) if rng is not None else 0
            ends = ([len(seq)] if shift else []) + list(range(len(seq) - shift, 1, -h))
            rows += [(u, max(0, end - h - 1), end) for end in ends]
        return np.array(rows, dtype=np.int64)

    def new_epoch(self, seed: int, random_windows: bool) -> None:
        """Called at each epoch: with random_windows, fresh window offsets (seeded: a resumed run
        sees the same windows)."""
        if self.model != "tiger":
            self.examples = self._windows(np.random.default_rng(seed) if random_windows else None)

    def __len__(self) -> int:
        return len(self.examples)

    def _first_token(self, user: int) -> int:
        return self.vocab.user_token(user) if self.vocab.user_buckets else EOS

    # -- prompts (shared by training, validation and serving) -----------------------------------

    def prompt(self, user: int, history: np.ndarray) -> np.ndarray:
        history = np.asarray(history, dtype=np.int64)[-self.max_history:]
        if self.model == "sasrec":
            return history + 1
        return np.concatenate([[self._first_token(user)], self.item_tokens[history].reshape(-1)])

    def prompt_batch(self, users, histories) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded for tiger (encoder), left-padded for causal and sasrec (last token aligned)."""
        prompts = [self.prompt(u, h) for u, h in zip(users, histories)]
        width = max(1, max(len(p) for p in prompts))
        if self.model == "sasrec":
            width = self.max_history
        ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            if not len(p):
                continue
            sl = slice(0, len(p)) if self.model == "tiger" else slice(width - len(p), width)
            ids[i, sl] = torch.as_tensor(p)
            mask[i, sl] = 1
        return ids, mask

    # -- training batches ----------------------------------------------------------------------

    def batch(self, rows: np.ndarray) -> Batch:
        return {"tiger": self._tiger, "causal": self._causal, "sasrec": self._sasrec}[self.model](self.examples[rows])

    def _tiger(self, examples) -> Batch:
        users = examples[:, 0]
        histories = [self.train[u][max(0, e - self.max_history):e] for u, e in examples]
        ids, mask = self.prompt_batch(users, histories)
        target = torch.as_tensor(self.item_tokens[[self.train[u][e] for u, e in examples]])
        decoder_in = torch.cat([torch.full((len(examples), 1), PAD, dtype=torch.long), target[:, :-1]], dim=1)
        return Batch({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_in, "labels": target},
                     tokens=int(target.numel()))

    def _causal(self, examples) -> Batch:
        seqs = [np.concatenate([[self._first_token(u)], self.item_tokens[self.train[u][s:e]].reshape(-1)])
                for u, s, e in examples]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.as_tensor(s)
            mask[i, : len(s)] = 1
            labels[i, : len(s) - 1] = torch.as_tensor(s[1:])  # position p predicts token p + 1
        return Batch({"input_ids": ids, "attention_mask": mask, "labels": labels}, tokens=int((labels >= 0).sum()))

    def _sasrec(self, examples) -> Batch:
        width = self.max_history
        tokens = torch.zeros((len(examples), width), dtype=torch.long)
        targets = torch.full_like(tokens, IGNORE)
        for i, (u, s, e) in enumerate(examples):
            window = self.train[u][s:e]
            inputs, outs = window[:-1][-width:], window[1:][-width:]
            tokens[i, width - len(inputs):] = torch.as_tensor(inputs + 1)
            targets[i, width - len(outs):] = torch.as_tensor(np.array(outs))
        return Batch({"tokens": tokens, "targets": targets}, tokens=int((targets >= 0).sum()))
