"""What a rater sees: items in a per-rater order, candidates blind and shuffled per rater.

Each rater gets their own order of items and of the candidates inside an item, from a hash of
(rater, item[, response]): the same on every reload and restart (so a rater resumes where they left off)
and different between raters (so position effects average out over the team). Nothing shown names a
model, run or group.

next:      the first item in the rater's order they have neither rated nor skipped; when only skipped
           items are left, the one skipped longest ago; `{"done": true}` when every item is rated.
previous:  walks back through the items in the order the rater first rated them (an item skipped and not
           rated yet sits where it was skipped).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from vlm_tune.rate.store import RatingsStore
from vlm_tune.rate.tasks import TaskItem


def order_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def item_payload(item: TaskItem, rater: str) -> dict:
    """The item as the API shows it: exactly item_id, image_url, prompt, responses (shuffled for this rater)."""
    responses = sorted(item.responses, key=lambda pair: order_key(rater, item.item_id, pair[0]))
    return {
        "item_id": item.item_id,
        "image_url": f"/images/{quote(item.item_id)}",
        "prompt": item.prompt,
        "responses": [{"response_id": rid, "text": text} for rid, text in responses],
    }


class RaterQueue:
    """Next / previous item of a rater over the store's current items."""

    def __init__(self, store: RatingsStore, items: list[TaskItem]):
        self.store = store
        self.items = {item.item_id: item for item in items}
        self._orders: dict[str, list[str]] = {}  # the items do not change while the server runs

    def ordered(self, rater: str) -> list[str]:
        if rater not in self._orders:
            self._orders[rater] = sorted(self.items, key=lambda item_id: order_key(rater, item_id))
        return self._orders[rater]

    def next_item(self, rater: str) -> TaskItem | None:
        rated, skipped, _ = self.store.rater_activity(rater)
        open_items = [i for i in self.ordered(rater) if i not in rated]
        fresh = [i for i in open_items if i not in skipped]
        if fresh:
            return self.items[fresh[0]]
        if open_items:
            return self.items[min(open_items, key=lambda i: skipped[i])]
        return None

    def previous_item(self, rater: str, item_id: str | None) -> TaskItem | None:
        """The item before `item_id` in the order the rater first rated (or skipped) items; from the item being
        served (not rated yet) or from the end (item_id None), the last one in that order."""
        rated, _, first = self.store.rater_activity(rater)
        seen = sorted((i for i in first if i in self.items), key=lambda i: (first[i], i))
        if item_id in rated and item_id in seen:
            at = seen.index(item_id)
            return self.items[seen[at - 1]] if at > 0 else None
        seen = [i for i in seen if i != item_id]
        return self.items[seen[-1]] if seen else None

    def counts(self, rater: str) -> dict:
        rated, skipped, _ = self.store.rater_activity(rater)
        done = sum(1 for i in rated if i in self.items)
        waiting = sum(1 for i in skipped if i in self.items and i not in rated)
        return {"rater": rater, "done": done, "skipped": waiting, "items": len(self.items)}
