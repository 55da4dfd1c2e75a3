"""The CSR trie against a naive dict-of-dicts trie, on random code tables (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.semantic_ids.trie import PrefixTrie


@st.composite
def code_tables(draw):
    depth = draw(st.integers(1, 4))
    sizes = tuple(draw(st.lists(st.integers(1, 6), min_size=depth, max_size=depth)))
    rows = draw(st.sets(st.tuples(*[st.integers(0, s - 1) for s in sizes]), max_size=60))
    rows = draw(st.permutations(sorted(rows)))  # item order independent of code order
    codes = np.array(rows, dtype=np.int64).reshape(len(rows), depth)
    return codes, sizes


def naive_trie(codes: np.ndarray) -> dict:
    root: dict = {}
    for item, row in enumerate(codes):
        node = root
        for c in row[:-1]:
            node = node.setdefault(int(c), {})
        node[int(row[-1])] = item
    return root


@settings(max_examples=200, deadline=None)
@given(code_tables(), st.booleans())
def test_matches_naive_trie(table, dense):
    codes, sizes = table
    trie = PrefixTrie.from_codes(codes, sizes, dense_limit=10**9 if dense else 0)
    naive = naive_trie(codes)
    assert trie.num_items == len(codes)
    # Walk the naive trie breadth-first alongside the CSR one: same children, same masks.
    frontier = [(naive, 0)]
    for depth in range(len(sizes)):
        assert trie.num_nodes(depth) == len(frontier)
        nxt = []
        nodes = np.array([node_id for _, node_id in frontier], dtype=np.int64)
        masks = trie.allowed(depth, nodes)
        for (children, node_id), mask in zip(frontier, masks):
            got_codes, got_child = trie.children(depth, node_id)
            assert got_codes.tolist() == sorted(children)
            assert np.flatnonzero(mask).tolist() == sorted(children)
            for code, child in zip(got_codes.tolist(), got_child.tolist()):
                if depth == len(sizes) - 1:
                    assert child == children[code]  # the leaf edge holds the item index
                else:
                    nxt.append((children[code], child))
        frontier = sorted(nxt, key=lambda x: x[1])
        assert [node_id for _, node_id in frontier] == list(range(len(frontier)))


@settings(max_examples=200, deadline=None)
@given(code_tables(), st.data())
def test_accepts_exactly_the_table(table, data):
    codes, sizes = table
    trie = PrefixTrie.from_codes(codes, sizes)
    if len(codes):
        assert trie.lookup(codes).tolist() == list(range(len(codes)))
    members = {tuple(r) for r in codes.tolist()}
    queries = data.draw(st.lists(st.tuples(*[st.integers(0, s - 1) for s in sizes]), max_size=30))
    if queries:
        found = trie.lookup(np.array(queries))
        for q, f in zip(queries, found.tolist()):
            assert (f >= 0) == (q in members)
            if f >= 0:
                assert tuple(codes[f].tolist()) == q


@settings(max_examples=100, deadline=None)
@given(code_tables())
def test_save_load_roundtrip(tmp_path_factory, table):
    codes, sizes = table
    trie = PrefixTrie.from_codes(codes, sizes)
    path = tmp_path_factory.mktemp("trie") / "trie.safetensors"
    trie.save(path)
    loaded = PrefixTrie.load(path)
    assert loaded.codebook_sizes == trie.codebook_sizes
    for a, b in zip(trie.state().values(), loaded.state().values()):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_small_example_by_hand():
    codes = np.array([[1, 0], [0, 2], [1, 1], [0, 0]])
    trie = PrefixTrie.from_codes(codes, (2, 3))
    assert trie.offsets[0].tolist() == [0, 2]
    assert trie.codes[0].tolist() == [0, 1] and trie.child[0].tolist() == [0, 1]
    assert trie.offsets[1].tolist() == [0, 2, 4]
    assert trie.codes[1].tolist() == [0, 2, 0, 1] and trie.child[1].tolist() == [3, 1, 0, 2]
    assert trie.allowed(1, np.array([1, 0])).tolist() == [[True, True, False], [True, False, True]]
    assert trie.step(1, np.array([0, 0, 1]), np.array([2, 1, 1])).tolist() == [1, -1, 2]
    assert trie.codes[0].dtype == np.uint8
