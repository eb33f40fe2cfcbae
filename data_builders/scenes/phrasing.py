"""Caption phrasings: the same scene said several ways, as real captioners (and the people who wrote their
training captions) vary — so a captioner trained on them samples candidates that differ in *how* they say
it, not only in whether they got it right. Used by the `caption_phrasings` question type of the scenes
builder (recipes/tiny/sft_captioner_loop.yaml, `make loop`); the default build (`caption`, `tags`) never
uses it, so `make caption` keeps its data and numbers.

    plain          a flat picture of a red circle on the left and a blue square on the right on a white background
    subject_first  red circle on the left and blue square on the right on a white background in flat style
    wordy          a beautiful flat picture showing a red circle on the left and a blue square on the right on a
                   white background

Every phrasing states every attribute with the scene vocabulary, in the forms the scorer parses back
(`colour shape place`, `<colour> background`, the style word), so attribute recall does not depend on how
a caption is parsed; `plain` is exactly the reference caption (`caption_text`). The weights are how often
each phrasing is the label of a scene. `plain` and `wordy` open with an article ("a"/"an") and
`subject_first` with the colour, so the first token decides the phrasing and the article is the likelier
one (0.65 against 0.35): a captioner trained on these writes `plain` when decoding greedily and the others
only when sampling.

Measured with the tiny captioner (recipes/tiny/sft_captioner_loop.yaml, 4 epochs; docs/loop.md): what it
learns depends on the mix. These weights gave 94 % held-out attribute recall (96.5 % on the style); two
other mixes ("a red circle ..." for the subject first; "picture of ... in flat style") confused flat and
grainy (style 76-79 %) and reached 87-94 %. Objects-first, the tiny captioner names shapes and places a
few points less accurately than in `plain`.
"""

from __future__ import annotations

import numpy as np

from data_builders.scenes.scene import SENTENCE_POSITION, caption_text

# --- phrasings ---


def _objects(scene: dict, article: str = "a ") -> str:
    return " and ".join(f"{article}{o['color']} {o['shape']} {SENTENCE_POSITION[o['position']]}"
                        for o in scene["objects"])


def subject_first_text(scene: dict) -> str:
    """The objects first, the style last: 'red circle on the left ... on a white background in flat style'."""
    return f"{_objects(scene, article='')} on a {scene['background']} background in {scene['style']} style"


def wordy_text(scene: dict) -> str:
    """Filler words in the plain caption: 'a beautiful flat picture showing ... on a white background'."""
    return f"a beautiful {scene['style']} picture showing {_objects(scene)} on a {scene['background']} background"


PHRASINGS = {"plain": caption_text, "subject_first": subject_first_text, "wordy": wordy_text}
PHRASING_WEIGHTS = {"plain": 0.45, "subject_first": 0.35, "wordy": 0.2}
# Bumped whenever a phrasing or a weight changes, so data built with other phrasings is reported stale.
PHRASINGS_VERSION = 4


def phrasing_settings() -> dict:
    """What a dataset's build info records about its phrasings (compared to detect stale data)."""
    return {"version": PHRASINGS_VERSION, "weights": dict(PHRASING_WEIGHTS)}


def pick_phrasing(seed: int, split_index: int, index: int) -> str:
    """The phrasing of one scene's label: its own random stream (the scene's stream is left untouched, so
    the images and the other rows are those of the default build)."""
    rng = np.random.default_rng([seed, split_index, index, 1])
    names = list(PHRASING_WEIGHTS)
    return names[int(rng.choice(len(names), p=[PHRASING_WEIGHTS[n] for n in names]))]


def phrase(scene: dict, name: str) -> str:
    return PHRASINGS[name](scene)
