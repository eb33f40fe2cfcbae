"""The store and the per-rater queue, in process: task-file changes, history, blind per-rater order, next/back/skip."""

from __future__ import annotations

import json
import sqlite3

import pytest

from rate_helpers import image_tasks, response_tasks, write_tasks
from vlm_tune.rate.queue import RaterQueue, item_payload
from vlm_tune.rate.store import RatingsStore, StoreError
from vlm_tune.rate.tasks import load_tasks


def all_scores(item, score=3) -> dict:
    return {rid: score for rid, _ in item.responses}


def test_wal_and_full_sync(tmp_path):
    store = RatingsStore(tmp_path / "team.db")
    with store.connect() as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_rerating_updates_current_score_and_keeps_history(tmp_path):
    tasks = load_tasks(response_tasks(tmp_path, n_items=1))
    store = RatingsStore(tmp_path / "team.db")
    store.sync(tasks)
    item = tasks.items[0]
    store.record("ann", item.item_id, all_scores(item, 2))
    store.record("ann", item.item_id, all_scores(item, 5))
    assert [r.score for r in store.ratings()] == [5, 5, 5]
    with store.connect() as con:
        assert [row[0] for row in con.execute("SELECT score FROM history ORDER BY id")] == [2, 2, 2, 5, 5, 5]
        assert con.execute("SELECT content FROM task_files").fetchone()[0] == tasks.content


def test_changed_task_file_adds_and_reports_never_deletes(tmp_path):
    path = response_tasks(tmp_path, n_items=3)
    store = RatingsStore(tmp_path / "team.db")
    first = store.sync(load_tasks(path))
    assert first.first_use and not first.changed and len(first.added) == 3
    old = load_tasks(path).items
    store.record("ann", old[0].item_id, all_scores(old[0]))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_tasks(path, rows[1:] + [{**rows[0], "prompt": "a new item"}])  # item 0 replaced by a new one
    second = store.sync(load_tasks(path))
    assert second.changed and second.removed == [old[0].item_id] and len(second.added) == 1
    assert [i.item_id for i in store.items(removed=True)] == [old[0].item_id]
    assert len(store.items()) == 3
    assert store.ratings() == [] and len(store.ratings(include_removed=True)) == 3  # kept, not deleted
    write_tasks(path, rows)  # the old item comes back with its ratings
    third = store.sync(load_tasks(path))
    assert old[0].item_id in third.added and len(store.ratings()) == 3
    assert store.sync(load_tasks(path)).changed is False


def test_mode_of_a_database_is_fixed(tmp_path):
    store = RatingsStore(tmp_path / "team.db")
    store.sync(load_tasks(response_tasks(tmp_path / "r")))
    with pytest.raises(StoreError, match="holds response-mode items"):
        store.sync(load_tasks(image_tasks(tmp_path / "i")))


def test_missing_or_foreign_database(tmp_path):
    with pytest.raises(StoreError, match="no such ratings database"):
        RatingsStore(tmp_path / "none.db", create=False)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable ratings database"):
        RatingsStore(tmp_path / "junk.db")
    assert not isinstance(StoreError("x"), sqlite3.Error)


def test_blind_order_per_rater(tmp_path):
    tasks = load_tasks(response_tasks(tmp_path, n_items=12))
    store = RatingsStore(tmp_path / "team.db")
    store.sync(tasks)
    queue = RaterQueue(store, store.items())
    assert queue.ordered("ann") == queue.ordered("ann") != queue.ordered("bob")
    orders = {tuple(r["response_id"] for r in item_payload(item, rater)["responses"])
              for item in tasks.items for rater in ("ann", "bob", "cy", "dee")}
    assert len(orders) > 1  # candidates are shuffled, differently for different raters
    payload = item_payload(tasks.items[0], "ann")
    assert set(payload) == {"item_id", "image_url", "prompt", "responses"}
    assert "hidden-run" not in json.dumps(payload)  # the group never reaches a rater


def test_next_skip_and_back(tmp_path):
    store = RatingsStore(tmp_path / "team.db")
    store.sync(load_tasks(response_tasks(tmp_path, n_items=3)))
    queue = RaterQueue(store, store.items())
    a, b, c = (queue.items[i] for i in queue.ordered("ann"))
    assert queue.next_item("ann") == a and queue.previous_item("ann", a.item_id) is None
    store.record("ann", a.item_id, all_scores(a))
    store.skip("ann", b.item_id)
    assert queue.next_item("ann") == c
    assert queue.previous_item("ann", c.item_id) == b  # back from the item being served: the last one acted on
    store.record("ann", c.item_id, all_scores(c))
    assert queue.next_item("ann") == b  # only the skipped item is left: it comes back
    assert queue.previous_item("ann", c.item_id) == b and queue.previous_item("ann", a.item_id) is None
    store.record("ann", a.item_id, all_scores(a, 5))  # re-rating an old item does not reorder "back"
    assert queue.previous_item("ann", c.item_id) == b
    store.record("ann", b.item_id, all_scores(b))
    assert queue.next_item("ann") is None
    assert queue.previous_item("ann", None) == b  # from "done": the item rated last, then the one before it
    assert queue.previous_item("ann", b.item_id) == c
    assert queue.counts("ann") == {"rater": "ann", "done": 3, "skipped": 0, "items": 3}
    assert queue.next_item("bob") is not None
