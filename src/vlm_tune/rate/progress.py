"""The team's progress: items done per rater, Krippendorff's alpha (raw and on per-rater z-scores) and raters
who disagree with everyone, computed by the ratings builder's own `team_agreement` so the status page and
`python -m data_builders.ratings` never disagree about a number.

A unit of agreement is one (item, response): in image mode the image itself.
"""

from __future__ import annotations

import threading

from vlm_tune.rate.store import Rating, RatingsStore

SCALE = (1, 2, 3, 4, 5)


def agreement(ratings: list[Rating]) -> dict:
    """The ratings builder's team_agreement over current scores; a dict with a `note` when it cannot run."""
    if not ratings:
        return {"alpha_raw": None, "alpha_z": None, "raters": [], "note": "no ratings yet"}
    try:  # imported here: it pulls in pandas/datasets, and the server must start without waiting for them
        from data_builders.ratings import team_agreement
    except ImportError as exc:
        return {"alpha_raw": None, "alpha_z": None, "raters": [], "note": f"agreement code unavailable ({exc})"}
    result = team_agreement([f"{r.item_id}/{r.response_id}" for r in ratings], [r.rater for r in ratings],
                            [float(r.score) for r in ratings], domain=SCALE)
    return {**result, "note": result.get("alpha_note")}


def _rater_rows(totals: dict[str, tuple[int, int]], table: list[dict]) -> list[dict]:
    stats = {row["rater"]: row for row in table}
    rows = []
    for rater, (done, skipped) in totals.items():
        row = stats.get(rater, {})
        rows.append({"rater": rater, "done": done, "skipped": skipped, "ratings": row.get("count", 0),
                     "mean": row.get("mean"), "sd": row.get("sd"), "loo_r": row.get("loo_r"),
                     "flagged": bool(row.get("disagrees_with_everyone", False))})
    return rows


class Progress:
    """`GET /api/progress`: {mode, items, removed_items, raters: [...], alpha: {...}}; alpha is cached until
    the ratings change (the status page polls)."""

    def __init__(self, store: RatingsStore, mode: str, n_items: int, n_removed: int):
        self.store, self.mode, self.n_items, self.n_removed = store, mode, n_items, n_removed
        self._lock = threading.Lock()
        self._cached: tuple[tuple, dict] | None = None

    def _agreement(self) -> dict:
        version = self.store.version()
        with self._lock:
            if self._cached is None or self._cached[0] != version:
                self._cached = (version, agreement(self.store.ratings()))
            return self._cached[1]

    def payload(self) -> dict:
        agree = self._agreement()
        totals = self.store.rater_totals()
        return {
            "mode": self.mode,
            "items": self.n_items,
            "removed_items": self.n_removed,
            "raters": _rater_rows(totals, agree.get("raters", [])),
            "alpha": {"raw": agree.get("alpha_raw"), "z": agree.get("alpha_z"),
                      "n_items": agree.get("n_items", 0), "n_raters": agree.get("n_raters", 0),
                      "n_ratings": agree.get("n_ratings", 0), "note": agree.get("note")},
        }
