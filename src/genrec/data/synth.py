"""Synthetic data with latent topics, item text and sequential structure, for tests and scale.

Each item belongs to a topic and its text is drawn from that topic's words, so text similarity
predicts behaviour (what semantic IDs exploit). Each user favours a few topics and walks through
items: mostly to the item's fixed "sequel" (a sequential pattern a model can learn), otherwise
to a popular item of a favourite topic, sometimes anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from genrec.data.raw import RawDataset
from genrec.errors import GenrecError

_SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "su", "vo", "pel", "dar", "ni", "quo", "zen", "bri",
              "tas", "mon", "fe", "gil", "hor", "ju", "wex"]
_KINDS = ["lamp", "novel", "kettle", "album", "jacket", "game", "serum", "drill", "tent", "watch"]


@dataclass
class SynthConfig:
    items: int = 1000
    users: int = 500
    topics: int = 0                 # 0 = about sqrt(items) / 2, at least 4
    mean_length: float = 20.0       # mean events per user (at least 5)
    p_sequel: float = 0.5           # probability of stepping to the current item's sequel
    p_random: float = 0.1           # probability of a uniformly random item
    seed: int = 0

    def __post_init__(self):
        if self.items < 2 or self.users < 1:
            raise GenrecError("synthetic data needs at least 2 items and 1 user")
        if not (0 <= self.p_sequel <= 1 and 0 <= self.p_random <= 1 and self.p_sequel + self.p_random <= 1):
            raise GenrecError("p_sequel and p_random must be probabilities summing to at most 1")
        if self.topics <= 0:
            self.topics = max(4, int(np.sqrt(self.items) / 2))


def _words(rng: np.random.Generator, n: int) -> list[str]:
    picks = rng.integers(0, len(_SYLLABLES), size=(n, 3))
    return ["".join(_SYLLABLES[s] for s in row[: 2 + row[2] % 2]) for row in picks]


def synth(config: SynthConfig) -> RawDataset:
    rng = np.random.default_rng(config.seed)
    n_items, n_topics = config.items, config.topics
    topic_names = _words(rng, n_topics)
    topic_words = [_words(rng, 12) for _ in range(n_topics)]
    item_topic = rng.integers(0, n_topics, size=n_items)
    kinds = rng.integers(0, len(_KINDS), size=n_items)

    titles, texts = [], []
    for i in range(n_items):
        words = topic_words[item_topic[i]]
        picks = rng.choice(len(words), size=3, replace=False)
        title = f"{words[picks[0]].title()} {words[picks[1]]} {_KINDS[kinds[i]]}"
        titles.append(title)
        texts.append(f"{title}. Category: {topic_names[item_topic[i]]}. "
                     f"Features {words[picks[2]]} and {words[picks[0]]}.")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": titles, "text": texts,
                          "topic": [topic_names[t] for t in item_topic]})

    # Sequels stay within a topic: order each topic's items and link each to the next one.
    sequel = np.empty(n_items, dtype=np.int64)
    by_topic = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    for members in by_topic:
        if len(members):
            sequel[members] = np.roll(members, -1)
    popularity = rng.zipf(1.3, size=n_items).astype(np.float64)
    topic_probs = []
    for members in by_topic:
        weights = popularity[members] if len(members) else np.ones(1)
        topic_probs.append(weights / weights.sum())

    lengths = np.maximum(5, rng.poisson(config.mean_length, size=config.users))
    users, item_seq, times = [], [], []
    for u in range(config.users):
        favourites = rng.choice(n_topics, size=min(n_topics, 1 + rng.integers(0, 3)), replace=False)
        choices = rng.random(lengths[u])
        current = -1
        t0 = 1_600_000_000 + int(rng.integers(0, 10_000_000))
        for step in range(lengths[u]):
            if current >= 0 and choices[step] < config.p_sequel:
                current = int(sequel[current])
            elif choices[step] < config.p_sequel + config.p_random:
                current = int(rng.integers(0, n_items))
            else:
                topic = favourites[rng.integers(0, len(favourites))]
                members = by_topic[topic]
                if not len(members):
                    current = int(rng.integers(0, n_items))
                else:
                    current = int(members[rng.choice(len(members), p=topic_probs[topic])])
            users.append(f"u{u}")
            item_seq.append(f"i{current}")
            times.append(t0 + step * 3600)
    return RawDataset(name="synthetic", user_ids=np.array(users, dtype=object),
                      item_ids=np.array(item_seq, dtype=object), timestamps=np.array(times, dtype=np.float64),
                      items=items, sources=[{"path": "synthetic", "config": vars(config)}])
