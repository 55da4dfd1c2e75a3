"""The serving history store: the dataset's histories, events on SQLite, and two stores on one
file (the processes of `genrec serve --http-processes`) that see each other's events."""

from __future__ import annotations

import threading

from genrec.data.dataset import load_dataset
from genrec.serving.history import HistoryStore, dataset_histories


def test_two_stores_on_one_file_read_each_others_events_in_commit_order(ml100k_dir, tmp_path):
    dataset = load_dataset(ml100k_dir)
    first, second = (HistoryStore(dataset, tmp_path / "events.sqlite") for _ in range(2))
    user = dataset.users["user_id"].astype(str).iloc[0]
    seeded = dataset_histories(dataset)[user]
    assert first.history(user) == second.history(user) == seeded
    assert first.history("new") == []

    first.append(user, [5, 6])
    second.append(user, [7])
    first.append("new", [1])
    assert first.history(user) == second.history(user) == seeded + [5, 6, 7]
    assert second.history("new") == [1]

    # Writers on both at once: every event lands once, and both read the same order.
    def write(store, items):
        for item in items:
            store.append("both", [item])

    threads = [threading.Thread(target=write, args=(store, range(start, start + 50)))
               for store, start in ((first, 0), (second, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = first.history("both")
    assert sorted(order) == list(range(50)) + list(range(100, 150))
    assert second.history("both") == order

    first.close()
    second.close()
    reopened = HistoryStore(dataset, tmp_path / "events.sqlite")   # a restart reads them all back
    assert reopened.history("both") == order
    assert reopened.history(user) == seeded + [5, 6, 7]
    reopened.close()
