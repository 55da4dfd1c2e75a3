import math

import pytest
import torch
import torch.nn.functional as F

from genrec.models.factory import code_cross_entropy
from genrec.models.vocab import SemanticVocab


def test_token_levels_mark_each_codebook_block():
    vocab = SemanticVocab((3, 2), user_buckets=2)
    assert vocab.token_levels().tolist() == [-1, -1, 0, 0, 0, 1, 1, -1, -1]


def test_without_smoothing_it_is_torch_cross_entropy_over_kept_labels():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 9), torch.tensor([2, -100, 5, 6, 3])
    keep = labels != -100
    assert code_cross_entropy(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits[keep], labels[keep]).item(), abs=1e-6)


def test_smoothing_spreads_over_the_labels_own_codebook_only():
    levels = torch.as_tensor(SemanticVocab((3, 2), user_buckets=2).token_levels())
    # One row, label 5 (level 1, block {5, 6}): uniform logits over the 9 tokens give log p = -log 9
    # everywhere, so the loss is -log(1/9) whatever the smoothing.
    flat = torch.zeros(1, 9)
    assert code_cross_entropy(flat, torch.tensor([5]), 0.3, levels).item() == pytest.approx(math.log(9))
    # Put mass on token 2 (level 0): it must not count in the smoothing term of a level-1 label.
    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    log_p = torch.log_softmax(logits, -1)[0]
    expected = 0.9 * -log_p[5] + 0.1 * -(log_p[5] + log_p[6]) / 2
    assert code_cross_entropy(logits, torch.tensor([5]), 0.1, levels).item() == pytest.approx(expected.item(), abs=1e-6)
