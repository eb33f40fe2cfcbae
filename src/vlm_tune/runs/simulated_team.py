"""The simulated team of `make loop`: five raters whose taste is written down here, and only here, rating
captions of the scenes they are shown — through the HTTP API of a running `vlm-tune rate serve`, as a
real team's browsers would.

The taste (docs/loop.md explains it):
- **correctness dominates** for four of the five: a caption loses points for every wrong or missing
  fact (colours, shapes, places, background, style), measured as 1 − F1 of its attributes against what
  the scene holds (data_builders.scenes.score); one wrong colour costs more than any matter of style gains.
- **the subject before the style** (three raters): a caption says what is in the picture first and names
  the drawing style last ("red circle on the left ... in flat style"); the SFT captioner does not do this
  on its own (greedy, it writes "a flat picture of ...", its training captions' commonest phrasing).
- **no filler** (the same three): "beautiful", "showing" ... say nothing a diffusion model can use.
- **one length-lover** ("dana"): more words, more points; she ignores style.
- **one near-random rater** ("eli"): barely looks; his scores are mostly noise, and the team's α and
  the status page's "disagrees with everyone" flag should say so.
Raters differ in leniency (bias) and noise; every rater scores the same caption of the same image the
same way (the noise is a hash of rater, image and text), so a rerun of the loop rates identically.

The taste reads only the scene of the image being rated — what a person would see in it — never any
other image; `make loop` measures held-out images with the same `team_score`, and never rates them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np

from data_builders.scenes import SHAPE_WORDS, STYLE_WORDS, caption_attributes, scene_attributes

# --- the taste -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rater:
    name: str
    correctness: float  # points lost at F1 = 0 (a wrong colour in a two-object scene costs 0.2 of it)
    style_last: float  # points for naming the style after the objects ("... in flat style")
    filler: float  # points for a caption with filler words (negative: dislikes them)
    per_char: float  # points per character beyond LENGTH_PIVOT (the length-lover)
    bias: float  # leniency: + lenient, − harsh
    noise: float  # sd of the rater's own noise (points)


BASE = 3.5  # a correct caption with nothing the rater likes or dislikes
LENGTH_PIVOT = 90  # characters; about a plain two-object caption
TEAM = (
    Rater("ana", correctness=8.0, style_last=1.0, filler=-0.6, per_char=0.0, bias=0.0, noise=0.3),
    Rater("ben", correctness=8.0, style_last=1.0, filler=-0.6, per_char=0.0, bias=0.4, noise=0.3),
    Rater("chen", correctness=10.0, style_last=0.8, filler=-0.8, per_char=0.0, bias=-0.5, noise=0.4),
    Rater("dana", correctness=6.0, style_last=0.0, filler=0.0, per_char=0.05, bias=0.0, noise=0.4),
    Rater("eli", correctness=1.0, style_last=0.0, filler=0.0, per_char=0.0, bias=0.0, noise=1.5),
)
FILLER_WORDS = frozenset({"beautiful", "showing", "nice", "lovely", "detailed", "stunning", "amazing", "very",
                          "high", "quality", "masterpiece", "image", "shows"})
_STYLE_WORD = re.compile(rf"\b(?:{'|'.join(STYLE_WORDS)})\b")
_SHAPE_WORD = re.compile(rf"\b(?:{'|'.join(SHAPE_WORDS)})s?\b")
_WORDS = re.compile(r"[a-z]+")


def f1(caption: str, scene: dict) -> float:
    """F1 of the caption's attributes against the scene's (1.0: everything said, nothing wrong)."""
    truth, said = scene_attributes(scene), caption_attributes(caption)
    hit = len(truth & said)
    return 0.0 if not hit else 2 * hit / (len(truth) + len(said))


def style_named_last(text: str) -> bool:
    """The style word comes after the first shape word: the subject is said before the style."""
    style, shape = _STYLE_WORD.search(text), _SHAPE_WORD.search(text)
    return bool(style and shape and style.start() > shape.start())


def taste_features(caption: str, scene: dict) -> dict:
    """What the team looks at in one caption of one scene."""
    text = caption.lower().strip()
    return {"f1": f1(text, scene), "style_last": style_named_last(text),
            "filler": bool(FILLER_WORDS & set(_WORDS.findall(text))), "chars": len(text)}


def _noise(rater: Rater, image_key: str, caption: str) -> float:
    digest = hashlib.sha256(f"{rater.name}\0{image_key}\0{caption}".encode("utf-8")).digest()
    return float(np.random.default_rng(list(digest[:16])).normal(0.0, rater.noise))


def rate(rater: Rater, caption: str, scene: dict, image_key: str) -> int:
    """The rater's 1–5 score of a caption of the scene `image_key` shows."""
    f = taste_features(caption, scene)
    points = (BASE + rater.bias - rater.correctness * (1.0 - f["f1"]) + rater.style_last * f["style_last"]
              + rater.filler * f["filler"] + rater.per_char * (f["chars"] - LENGTH_PIVOT)
              + _noise(rater, image_key, caption))
    return int(min(5, max(1, round(points))))


def team_score(captions: dict[str, str], scenes: dict[str, dict]) -> float:
    """Mean score of the whole team over the captions (image key -> caption) of scenes (image key -> scene)."""
    scores = [rate(r, captions[key], scenes[key], key) for key in captions for r in TEAM]
    return sum(scores) / len(scores)


# --- rating through the server's HTTP API ----------------------------------------------------


class RatingClient:
    """One rater's browser: GET /api/next, look at the image, POST /api/ratings, until done."""

    def __init__(self, base_url: str, rater: Rater, scene_of_image: dict[str, dict], timeout: float = 30.0):
        self.base_url, self.rater, self.scene_of_image, self.timeout = base_url.rstrip("/"), rater, scene_of_image, timeout

    def _request(self, path: str, body: dict | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{self.rater.name}: {request.method} {path} -> {exc.code} {exc.read()[:200]!r}") from None

    def look_at(self, image_url: str) -> tuple[str, dict]:
        """(image key, scene) of the image the page shows: the rater 'sees' it by its content (its hash)."""
        digest = hashlib.sha256(self._request(image_url)).hexdigest()
        if digest not in self.scene_of_image:
            raise RuntimeError(f"{self.rater.name}: the server showed an image the team does not know ({image_url})")
        return digest, self.scene_of_image[digest]

    def rate_all(self) -> int:
        """Rate every item the server offers this rater; the number rated."""
        done = 0
        query = urllib.parse.urlencode({"rater": self.rater.name})
        while True:
            item = json.loads(self._request(f"/api/next?{query}"))
            if item.get("done"):
                return done
            key, scene = self.look_at(item["image_url"])
            scores = {r["response_id"]: rate(self.rater, r["text"], scene, key) for r in item["responses"]}
            self._request("/api/ratings", {"rater": self.rater.name, "item_id": item["item_id"], "scores": scores})
            done += 1


def rate_together(base_url: str, scene_of_image: dict[str, dict], team=TEAM) -> dict[str, int]:
    """The whole team rates at once, one thread per rater (as five browsers would); {rater: items rated}."""
    counts, errors = {}, []

    def work(rater: Rater) -> None:
        try:
            counts[rater.name] = RatingClient(base_url, rater, scene_of_image).rate_all()
        except Exception as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,), name=f"rater-{r.name}") for r in team]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return counts


def image_scenes(truth_rows: list[dict], read_bytes) -> dict[str, dict]:
    """sha256 of each image's bytes -> its scene, from truth.jsonl rows; read_bytes(file_name) -> bytes."""
    return {hashlib.sha256(read_bytes(row["file_name"])).hexdigest(): row["scene"] for row in truth_rows}
