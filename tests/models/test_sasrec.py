"""SASRec: causality, scores over all items, and that it learns a deterministic pattern."""

from __future__ import annotations

import torch

from genrec.models.sasrec import SASRec, SASRecConfig


def test_causal_and_padding_invariant():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=20, max_len=8, dropout=0.0)).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6]])
    h = model(seq)
    changed = model(torch.tensor([[0, 0, 3, 4, 5, 9]]))
    torch.testing.assert_close(h[:, :5], changed[:, :5])  # the future does not leak back
    scores = model.score(seq)
    assert scores.shape == (1, 20)
    torch.testing.assert_close(scores, h[:, -1] @ model.item_emb.weight[1:].T)
    # an all-padding history still gives finite scores (cold user)
    assert torch.isfinite(model.score(torch.zeros(1, 6, dtype=torch.long))).all()


def test_learns_a_cycle_with_full_softmax():
    torch.manual_seed(0)
    n = 12
    model = SASRec(SASRecConfig(num_items=n, max_len=6, hidden_size=32, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = torch.arange(n)
    seqs = (starts[:, None] + torch.arange(7)) % n          # item i is always followed by i + 1
    tokens, targets = seqs[:, :-1] + 1, seqs[:, 1:]
    for _ in range(150):
        opt.zero_grad()
        loss = model.loss(tokens, targets)
        loss.backward()
        opt.step()
    model.eval()
    assert (model.score(tokens).argmax(-1) == targets[:, -1]).all()
