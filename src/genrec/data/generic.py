"""Users' own data: an interactions file plus optional items and users files in CSV, TSV,
Parquet or JSON lines (gzipped or not), with the column names given by flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.raw import RawDataset
from genrec.data.readers import Columns, parse_floats, parse_ids, parse_timestamps, read_columns
from genrec.errors import DataFormatError
from genrec.files import sha256_file


@dataclass
class ColumnNames:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    rating: str | None = None          # optional rating column in the interactions file
    text: list[str] | None = None      # item text columns; None = every text column of the items file
    title: str | None = None           # None = "title" if present, else the first text column


def _is_text(values: list) -> bool:
    """A column counts as text when some value is a string that is not a number."""
    seen = False
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str):
            return False
        try:
            float(value)
        except ValueError:
            seen = True
    return seen


def _join_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_join_text(v) for v in value if v is not None)
    return str(value).strip()


def read_items(path: str | Path, names: ColumnNames) -> tuple[pd.DataFrame, Columns]:
    """Items table: item_id, title, text (columns joined as "name: value. …"), plus the raw columns."""
    cols = read_columns(path)
    cols.require(names.item)
    ids = parse_ids(cols, names.item).astype(str)
    if names.text is not None:
        cols.require(*names.text)
        text_cols = list(names.text)
    else:
        text_cols = [c for c, v in cols.values.items() if c != names.item and _is_text(v)]
    if not text_cols:
        raise DataFormatError(path, "no text columns found for item text; name them with --text-cols")
    title_col = names.title or ("title" if "title" in text_cols else text_cols[0])
    cols.require(title_col)
    titles = [_join_text(v) for v in cols.values[title_col]]
    texts = []
    for i in range(len(cols)):
        values = [(c, _join_text(cols.values[c][i])) for c in text_cols]
        # One column is the text as it stands; several are labelled so the encoder sees which is which.
        texts.append(values[0][1] if len(values) == 1 else ". ".join(f"{c}: {v}" for c, v in values if v))
    frame = pd.DataFrame({"item_id": ids, "title": titles, "text": texts})
    for c in text_cols:
        if c not in (names.item, title_col, "text"):
            frame[c] = [_join_text(v) for v in cols.values[c]]
    dup = frame["item_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise cols.error(i, names.item, f"item {frame['item_id'].iloc[i]!r} appears twice")
    return frame, cols


def load_generic(interactions: str | Path, items: str | Path | None, users: str | Path | None,
                 names: ColumnNames, name: str = "custom") -> RawDataset:
    inter = read_columns(interactions)
    required = [names.user, names.item, names.time] + ([names.rating] if names.rating else [])
    inter.require(*required)
    user_ids = parse_ids(inter, names.user)
    item_ids = parse_ids(inter, names.item)
    timestamps = parse_timestamps(inter, names.time)
    ratings = parse_floats(inter, names.rating) if names.rating else None
    sources = [{"path": str(interactions), "sha256": sha256_file(interactions), "rows": len(inter)}]

    if items is not None:
        item_frame, item_cols = read_items(items, names)
        sources.append({"path": str(items), "sha256": sha256_file(items), "rows": len(item_cols)})
    else:  # no text: the item id is all we know, so that is its text
        unique = pd.unique(item_ids).astype(str)
        item_frame = pd.DataFrame({"item_id": unique, "title": unique, "text": unique})

    user_frame = None
    if users is not None:
        user_cols = read_columns(users)
        user_cols.require(names.user)
        user_frame = pd.DataFrame({"user_id": parse_ids(user_cols, names.user).astype(str)})
        for c, v in user_cols.values.items():
            if c != names.user:
                user_frame[c] = v
        sources.append({"path": str(users), "sha256": sha256_file(users), "rows": len(user_cols)})

    return RawDataset(name=name, user_ids=user_ids, item_ids=item_ids, timestamps=timestamps,
                      ratings=ratings, items=item_frame, users=user_frame, sources=sources)
