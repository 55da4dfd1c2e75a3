"""MovieLens-100K: from the `recbole==1.2.1` wheel (fetched into the cache, read from the zip,
never installed or committed) or from an original GroupLens `ml-100k/` folder."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.raw import RawDataset
from genrec.data.readers import Columns, parse_floats, parse_ids, parse_timestamps, read_delimited
from genrec.errors import DataFormatError, GenrecError
from genrec.files import cache_dir, sha256_file

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western"]


def fetch_recbole_wheel() -> Path:
    """Path of the cached recbole wheel, downloading it with pip on first use."""
    target = cache_dir() / "downloads" / RECBOLE_WHEEL
    if target.exists() and sha256_file(target) == RECBOLE_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "recbole==1.2.1", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / RECBOLE_WHEEL
        if result.returncode != 0 or not wheel.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise GenrecError(f"could not download MovieLens-100K (pip download recbole==1.2.1): {last}")
        if sha256_file(wheel) != RECBOLE_SHA256:
            raise GenrecError(f"downloaded {RECBOLE_WHEEL} has an unexpected sha256; refusing to use it")
        wheel.replace(target)
    return target


def item_text(title: str, year: str, genres: list[str]) -> str:
    year_part = f" ({year})" if year else ""
    genre_part = f" Genres: {', '.join(genres)}." if genres else ""
    return f"{title}{year_part}.{genre_part}"


def _finish(name: str, inter: Columns, items: pd.DataFrame, users: pd.DataFrame,
            sources: list[dict]) -> RawDataset:
    inter.require("user_id", "item_id", "rating", "timestamp")
    return RawDataset(
        name=name,
        user_ids=parse_ids(inter, "user_id"),
        item_ids=parse_ids(inter, "item_id"),
        timestamps=parse_timestamps(inter, "timestamp"),
        ratings=parse_floats(inter, "rating"),
        items=items, users=users, sources=sources)


def _users_frame(cols: Columns) -> pd.DataFrame:
    cols.require("user_id", "age", "gender", "occupation")
    ages = parse_floats(cols, "age").astype(np.int16)
    return pd.DataFrame({"user_id": parse_ids(cols, "user_id").astype(str), "age": ages,
                         "gender": cols.values["gender"], "occupation": cols.values["occupation"]})


def load_ml100k_recbole() -> RawDataset:
    wheel = fetch_recbole_wheel()
    tables: dict[str, Columns] = {}
    with zipfile.ZipFile(wheel) as zf:
        for kind in ("inter", "item", "user"):
            member = f"{RECBOLE_PREFIX}.{kind}"
            with zf.open(member) as raw:
                stream = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                tables[kind] = read_delimited(stream, f"{wheel.name}!{member}", "\t", strip_type_suffix=True)
    item_cols = tables["item"]
    item_cols.require("item_id", "movie_title", "release_year", "class")
    ids = parse_ids(item_cols, "item_id").astype(str)
    titles = [t.strip() for t in item_cols.values["movie_title"]]
    years = [y.strip() for y in item_cols.values["release_year"]]
    genres = [g.split() for g in item_cols.values["class"]]
    items = pd.DataFrame({"item_id": ids, "title": titles,
                          "text": [item_text(t, y, g) for t, y, g in zip(titles, years, genres)],
                          "year": years, "genres": ["|".join(g) for g in genres]})
    sources = [{"path": f"{wheel.name}!{RECBOLE_PREFIX}.{k}", "sha256": RECBOLE_SHA256,
                "rows": len(tables[k])} for k in ("inter", "item", "user")]
    return _finish("ml-100k", tables["inter"], items, _users_frame(tables["user"]), sources)


_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def load_ml100k_grouplens(folder: str | Path) -> RawDataset:
    """The original GroupLens files: u.data (tab), u.item and u.user ('|', latin-1)."""
    folder = Path(folder)
    paths = {name: folder / name for name in ("u.data", "u.item", "u.user")}
    for path in paths.values():
        if not path.exists():
            raise DataFormatError(path, "file not found (expected the GroupLens ml-100k folder)")

    def read(name: str, sep: str, fields: list[str]) -> Columns:
        with open(paths[name], encoding="latin-1", newline="") as stream:
            return read_delimited(stream, str(paths[name]), sep, fieldnames=fields)

    inter = read("u.data", "\t", ["user_id", "item_id", "rating", "timestamp"])
    item_cols = read("u.item", "|", ["item_id", "title", "release_date", "video_release_date", "url"] + GENRES)
    user_cols = read("u.user", "|", ["user_id", "age", "gender", "occupation", "zip_code"])
    ids, titles, years, genres = [], [], [], []
    for i, raw_title in enumerate(item_cols.values["title"]):
        match = _TITLE_YEAR.match(raw_title.strip())
        title, year = (match.group(1), match.group(2)) if match else (raw_title.strip(), "")
        if not year and item_cols.values["release_date"][i][-4:].isdigit():
            year = item_cols.values["release_date"][i][-4:]
        flags = [g for g in GENRES if item_cols.values[g][i].strip() == "1"]
        ids.append(item_cols.values["item_id"][i].strip())
        titles.append(title)
        years.append(year)
        genres.append(flags)
    items = pd.DataFrame({"item_id": ids, "title": titles,
                          "text": [item_text(t, y, g) for t, y, g in zip(titles, years, genres)],
                          "year": years, "genres": ["|".join(g) for g in genres]})
    sources = [{"path": str(p), "sha256": sha256_file(p), "rows": len(c)}
               for p, c in zip(paths.values(), (inter, item_cols, user_cols))]
    return _finish("ml-100k", inter, items, _users_frame(user_cols), sources)
