"""The weight average: its update rule by hand, and that applying it leaves the model untouched."""

from __future__ import annotations

import torch

from genrec.training.averaging import WeightAverage


def test_update_rule_and_applied_block():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 6.0]]))
    average.update(step=1)                      # decay min(0.9, 2/11): mostly the new weights
    expected = torch.tensor([[1.0, 2.0]]) * (2 / 11) + torch.tensor([[3.0, 6.0]]) * (9 / 11)
    torch.testing.assert_close(average.shadow[0], expected)
    average.update(step=100)                    # decay 0.9
    expected = expected * 0.9 + torch.tensor([[3.0, 6.0]]) * 0.1
    torch.testing.assert_close(average.shadow[0], expected)
    with average.applied():
        assert torch.equal(model.weight, average.shadow[0])
    assert torch.equal(model.weight, torch.tensor([[3.0, 6.0]]))
    restored = WeightAverage(model, decay=0.9)
    restored.load(average.state())
    assert torch.equal(restored.shadow[0], average.shadow[0])


def test_decay_zero_is_off():
    model = torch.nn.Linear(2, 1, bias=False)
    before = model.weight.detach().clone()
    average = WeightAverage(model, decay=0.0)
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(step=5)
    assert average.state() == {}
    with average.applied():
        assert torch.equal(model.weight, before + 1.0)   # the raw weights, untouched
    average.load({})
