"""Per-request item filters (history exclusion, deny and allow lists) as masks.

`item_filter` answers "may request r get item i"; `prefix_filter` extends it to every level of
the trie: a prefix is dead for a request when every item below it is excluded (or none is
allowed). Beam search applies it at each level, so no beam is spent on a prefix that can only
end in excluded items — with exclusion at the last level alone, a user with hundreds of seen
items got fewer than k results from beam 20. Requests' lists are kept as sorted
`row * size + id` keys and looked up with `searchsorted`: no Python loop over beams or nodes.
"""

from __future__ import annotations

import torch


def flatten_lists(lists) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-request lists -> (rows, ids), None entries treated as empty."""
    lists = [x if x is not None else [] for x in lists]
    rows = [torch.full((len(x),), r, dtype=torch.long) for r, x in enumerate(lists)]
    ids = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in lists]
    if not rows:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(rows), torch.cat(ids)


def _contains(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    return keys[pos] == query


class _Keys:
    """Allowed (row, id) pairs for one id space of `size` ids: deny keys, allow keys."""

    def __init__(self, size: int, deny: torch.Tensor | None, allow: torch.Tensor | None,
                 has_allow: torch.Tensor | None):
        self.size, self.deny, self.allow, self.has_allow = size, deny, allow, has_allow

    def __call__(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ok = ids >= 0
        query = rows * self.size + ids.clamp(min=0)
        if self.deny is not None:
            ok &= ~_contains(self.deny, query)
        if self.allow is not None:
            ok &= _contains(self.allow, query) | ~self.has_allow[rows]
        return ok


def item_filter(n_items: int, exclude: list | None, include_only: list | None, device=None):
    """A function (rows, items) -> allowed bool, from per-request item lists (include_only
    entries may be None: no restriction for that request)."""
    deny = allow = has_allow = None
    if exclude is not None:
        rows, items = flatten_lists(exclude)
        deny = torch.sort(rows * n_items + items)[0].to(device)
    if include_only is not None:
        rows, items = flatten_lists(include_only)
        allow = torch.sort(rows * n_items + items)[0].to(device)
        has_allow = torch.tensor([x is not None for x in include_only], dtype=torch.bool, device=device)
    return _Keys(n_items, deny, allow, has_allow)


def dense_item_mask(n_items: int, exclude: list | None, include_only: list | None, batch: int) -> torch.Tensor:
    """The same per-request rule as one (batch, n_items) bool tensor: not excluded and, where a
    request has an allow-list, on it (what a fixed-shape search takes; `DenseTrie.level_masks`
    extends it to every level). Ids outside the catalog are ignored, as the key lists ignore them."""
    def pairs(lists):
        rows, items = flatten_lists(lists)
        keep = (items >= 0) & (items < n_items)
        return rows[keep], items[keep]

    ok = torch.ones(batch, n_items, dtype=torch.bool)
    if include_only is not None:
        ok[torch.tensor([x is not None for x in include_only], dtype=torch.bool)] = False
        ok[pairs(include_only)] = True
    if exclude is not None:   # after the allow-lists: an allowed item that is excluded stays out
        ok[pairs(exclude)] = False
    return ok


def prefix_filter(trie, n_items: int, exclude: list | None, include_only: list | None):
    """A function (level, rows, children) -> allowed bool for the children beam search picks at
    `level` (trie nodes one level down, or items at the last level)."""
    device = trie.offsets[0].device
    last = trie.depth - 1
    per_level = {last: item_filter(n_items, exclude, include_only, device)}
    if include_only is not None:
        # A prefix is allowed only if some item below it is allowed *and* not excluded: an
        # allow-listed item that is also excluded must not keep its prefix alive.
        rows, items = flatten_lists(include_only)
        if exclude is not None:
            keep = per_level[last](rows.to(device), items.to(device)).cpu()
            rows, items = rows[keep], items[keep]
        allowed_pairs = rows, items
    for level in range(last):
        depth = level + 1
        # Keys are built on the CPU (set work on small tensors) and moved to the trie's device.
        node_of_item, items_below = trie.node_of_item[depth].cpu(), trie.items_below[depth].cpu()
        size = len(items_below)
        deny = allow = has_allow = None
        if exclude is not None:
            rows, items = flatten_lists(exclude)
            pairs = torch.unique(rows * n_items + items)          # an item listed twice counts once
            rows, items = pairs // n_items, pairs % n_items
            nodes = node_of_item[items.clamp(max=len(node_of_item) - 1)]
            keep = (items < len(node_of_item)) & (nodes >= 0)
            keys, counts = torch.unique(rows[keep] * size + nodes[keep], return_counts=True)
            deny = keys[counts == items_below[keys % size]].to(device)   # every item below is excluded
        if include_only is not None:
            rows, items = allowed_pairs
            nodes = node_of_item[items.clamp(max=len(node_of_item) - 1)]
            keep = (items < len(node_of_item)) & (nodes >= 0)
            allow = torch.unique(rows[keep] * size + nodes[keep]).to(device)
            has_allow = torch.tensor([x is not None for x in include_only], dtype=torch.bool, device=device)
        per_level[level] = _Keys(size, deny, allow, has_allow)

    def allowed(level: int, rows: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
        return per_level[level](rows, children)

    return allowed
