"""Amazon review dumps, 2014 and 2018 layouts (JSON lines, gzipped or not).

Reviews (both years): reviewerID, asin, overall, unixReviewTime (or reviewTime "MM DD, YYYY").
Metadata 2014: Python-literal dicts with title, brand, price, categories (list of lists).
Metadata 2018: JSON with title, brand, price, category (list), main_cat.
Item text follows TIGER: title, brand, categories and price.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.raw import RawDataset
from genrec.data.readers import Columns, parse_floats, parse_ids, read_columns
from genrec.files import sha256_file


def _review_times(cols: Columns) -> np.ndarray:
    unix = cols.values.get("unixReviewTime")
    text = cols.values.get("reviewTime")
    if unix is None and text is None:
        cols.require("unixReviewTime")
    out = np.empty(len(cols), dtype=np.float64)
    for i in range(len(cols)):
        value = unix[i] if unix is not None else None
        try:
            if value is not None and not isinstance(value, bool):
                out[i] = float(value)
            elif text is not None and text[i] is not None:
                dt = datetime.strptime(str(text[i]).strip(), "%m %d, %Y").replace(tzinfo=timezone.utc)
                out[i] = dt.timestamp()
            else:
                raise ValueError
        except (TypeError, ValueError):
            column = "unixReviewTime" if unix is not None else "reviewTime"
            shown = value if unix is not None else text[i]
            raise cols.error(i, column, f"cannot parse review time {shown!r}") from None
    return out


def _categories(record_2014, record_2018) -> list[str]:
    if isinstance(record_2014, list):  # [["Beauty", "Skin Care", "Face"], ["Beauty", ...]]
        path = record_2014[0] if record_2014 and isinstance(record_2014[0], list) else record_2014
        return [str(c) for c in path]
    if isinstance(record_2018, list):
        return [str(c) for c in record_2018]
    return []


def _clean(value) -> str:
    return html.unescape(str(value)).strip() if value not in (None, "") else ""


def _meta_frame(cols: Columns) -> pd.DataFrame:
    cols.require("asin")
    ids = parse_ids(cols, "asin").astype(str)
    n = len(cols)
    get = lambda key: cols.values.get(key, [None] * n)  # noqa: E731
    titles, brands, prices, cats, texts = [], [], [], [], []
    for i, (title, brand, price, c14, c18) in enumerate(zip(get("title"), get("brand"), get("price"),
                                                            get("categories"), get("category"))):
        title, brand, price = _clean(title), _clean(brand), _clean(price)
        if price and not price.startswith("$"):
            try:
                price = f"${float(price):.2f}"
            except ValueError:
                price = ""
        categories = [_clean(c) for c in _categories(c14, c18) if _clean(c)]
        parts = [f"Title: {title}" if title else f"Item {ids[i]}"]
        if brand:
            parts.append(f"Brand: {brand}")
        if categories:
            parts.append(f"Categories: {' > '.join(categories)}")
        if price:
            parts.append(f"Price: {price}")
        titles.append(title or ids[i])
        brands.append(brand)
        prices.append(price)
        cats.append(" > ".join(categories))
        texts.append(". ".join(parts) + ".")
    frame = pd.DataFrame({"item_id": ids, "title": titles, "text": texts, "brand": brands,
                          "categories": cats, "price": prices})
    return frame.drop_duplicates("item_id", keep="first").reset_index(drop=True)


def load_amazon(reviews: str | Path, meta: str | Path, name: str = "amazon") -> RawDataset:
    review_cols = read_columns(reviews, fmt="jsonl")
    review_cols.require("reviewerID", "asin")
    meta_cols = read_columns(meta, fmt="jsonl", allow_python_literals=True)
    items = _meta_frame(meta_cols)
    ratings = parse_floats(review_cols, "overall") if "overall" in review_cols.values else None
    return RawDataset(
        name=name,
        user_ids=parse_ids(review_cols, "reviewerID"),
        item_ids=parse_ids(review_cols, "asin"),
        timestamps=_review_times(review_cols),
        ratings=ratings,
        items=items,
        sources=[{"path": str(reviews), "sha256": sha256_file(reviews), "rows": len(review_cols)},
                 {"path": str(meta), "sha256": sha256_file(meta), "rows": len(meta_cols)}])
