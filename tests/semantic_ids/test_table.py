"""SemanticIdTable: collision level, tokens and strings both ways, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.semantic_ids.table import SemanticIdTable, add_collision_level


def test_collision_level_numbers_items_in_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [3, 1], [1, 2], [0, 0]])
    out = add_collision_level(codes, capacity=4)
    assert out[:, 2].tolist() == [0, 0, 1, 0, 2, 1]
    with pytest.raises(ValueError, match="3 items share one code prefix"):
        add_collision_level(codes, capacity=2)


def test_tokens_and_strings_roundtrip(tmp_path):
    codes = add_collision_level(np.array([[3, 0], [3, 1], [2, 1], [3, 0]]), capacity=4)
    table = SemanticIdTable(codes, (4, 2, 4))
    assert table.vocab_size == 10
    assert table.token_offsets.tolist() == [0, 4, 6]
    assert table.tokens(0).tolist() == [3, 4, 6]
    assert table.tokens(3).tolist() == [3, 4, 7]
    assert table.token_strings(3) == "<a_3><b_0><c_1>"
    assert table.items_of_tokens(table.tokens(np.arange(4))).tolist() == [0, 1, 2, 3]
    assert table.items_of_tokens(np.array([[3, 4, 8], [9, 4, 6]])).tolist() == [-1, -1]
    for i in range(4):
        assert table.item_of_string(table.token_strings(i)) == i
    assert table.item_of_string("<a_3><b_0>") is None
    assert table.item_of_string("<b_3><a_0><c_0>") is None
    assert table.item_of_string("<a_3><b_7><c_0>") is None
    assert table.level_of_token(7) == (2, 1)
    table.save(tmp_path / "t.safetensors")
    loaded = SemanticIdTable.load(tmp_path / "t.safetensors")
    assert np.array_equal(loaded.codes, table.codes) and loaded.codebook_sizes == table.codebook_sizes
