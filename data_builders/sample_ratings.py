"""A realistic sample of team ratings (response mode) on synthetic charts: the default of `make dpo`.

Each chart comes from data_builders.chartqa with a question a tiny model can see the answer to
(count, trend, line_color, color). Every chart gets 3-4 candidate responses: the right answer
said short ("3"), the right answer said verbose and hedged ("I think there are probably 3 bars,
but I am not sure."), and one or two wrong answers (short or verbose). A team of raters scores
every response 1-5. True quality is correctness (dominant) plus a preference for short direct
answers; each rater adds their own bias and noise: one is lenient (+1), one harsh (-1), and one
mostly rates by length (longer = better), so they disagree with the rest of the team - the
kind of rater the ratings report flags.

Usage:
    python -m data_builders.sample_ratings --output artifacts/sample-ratings \\
        [--seed 0] [--charts 120] [--raters 5] [--image_size 160] [--overwrite]
    python -m data_builders.ratings --ratings artifacts/sample-ratings/ratings.csv --output artifacts/dpo-pairs

    from data_builders.sample_ratings import make_sample_ratings
    csv_path = make_sample_ratings("artifacts/sample-ratings", seed=0)

Writes DIR/images/chart_NNNN.png and DIR/ratings.csv (UTF-8; columns image, prompt, response,
rater, score; image paths relative to DIR). Deterministic by seed.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from data_builders._common import positive_int, refuse_nonempty
from data_builders.chartqa import COLOR_NAMES, COUNT_RANGE, MARK_NOUN, encode_png, render_chart, sample_chart
from data_builders.ratings import RatingsError
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import run_command

# --- team ---

QUESTION_TYPES = ("count", "trend", "line_color", "color")  # what a tiny model can see
RATER_NAMES = ("Aiko", "Björn", "Chloé", "Dmitri", "Eun-ji", "Farah", "Günther", "Hana", "Iñigo", "Jóhanna")
# (role, bias, noise sd) of the first five raters; any further rater is a plain one.
RATER_ROLES = (
    ("plain", 0.1, 0.55),
    ("lenient", 1.0, 0.5),
    ("harsh", -1.0, 0.6),
    ("plain", -0.2, 0.7),
    ("length", 0.0, 0.5),
)
COLUMNS = ("image", "prompt", "response", "rater", "score")

# True quality on the 1-5 scale: correctness dominates, short direct answers are a bit better.
QUALITY = {(True, "short"): 4.6, (True, "verbose"): 3.9, (False, "short"): 2.0, (False, "verbose"): 1.6}
LENGTH_WEIGHT = 0.85  # the length rater's score is mostly response length


# --- responses ---


def _verbose(qtype: str, answer: str, kind: str, style: int) -> str:
    """A hedged, wordy statement of `answer` (style picks one of two phrasings)."""
    if qtype == "count":
        noun = MARK_NOUN[kind] + ("" if answer == "1" else "s")
        options = (
            f"I think there are probably {answer} {noun}, but I am not sure.",
            f"Looking at the chart, it seems to show {answer} {noun}, although I could be miscounting.",
        )
    elif qtype == "trend":
        options = (
            f"It looks like the line is probably {answer} overall, but I am not completely sure.",
            f"From what I can see, the line seems to be {answer} from left to right, I think.",
        )
    else:
        thing = "the line" if qtype == "line_color" else "it"
        options = (
            f"I think {thing} is probably {answer}, but I am not sure.",
            f"It is hard to tell exactly, but {thing} looks like it might be {answer}.",
        )
    return options[style]


def _wrong_answers(rng: np.random.Generator, spec) -> list[str]:
    """Plausible wrong answers, most plausible first (a colour from the same chart, a near count)."""
    if spec.qtype == "count":
        right = int(spec.answer)
        others = [n for n in range(COUNT_RANGE[0], COUNT_RANGE[1] + 1) if n != right]
        others.sort(key=lambda n: (abs(n - right), rng.random()))
        return [str(n) for n in others]
    if spec.qtype == "trend":
        return ["decreasing" if spec.answer == "increasing" else "increasing"]
    in_chart = [c for c in spec.colors if c != spec.answer]
    elsewhere = [c for c in COLOR_NAMES if c != spec.answer and c not in in_chart]
    return [str(c) for c in rng.permutation(in_chart)] + [str(c) for c in rng.permutation(elsewhere)]


def candidate_responses(rng: np.random.Generator, spec) -> list[tuple[str, bool, str]]:
    """3-4 (response, correct, style) for one chart, in random order."""
    out = [
        (spec.answer, True, "short"),
        (_verbose(spec.qtype, spec.answer, spec.kind, int(rng.integers(2))), True, "verbose"),
    ]
    wrong = _wrong_answers(rng, spec)
    first_style = "short" if rng.random() < 0.5 else "verbose"
    n_wrong = 2 if rng.random() < 0.5 else 1
    for k in range(n_wrong):
        value = wrong[min(k, len(wrong) - 1)]
        style = first_style if k == 0 else ("verbose" if first_style == "short" else "short")
        text = value if style == "short" else _verbose(spec.qtype, value, spec.kind, int(rng.integers(2)))
        out.append((text, False, style))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


# --- ratings ---


def team(n_raters: int, seed: int) -> list[dict]:
    """Rater name, role, bias and noise; roles beyond the first five are plain raters."""
    rng = np.random.default_rng([seed, 1_000_003])
    raters = []
    for i in range(n_raters):
        name = RATER_NAMES[i] if i < len(RATER_NAMES) else f"Rater {i + 1}"
        role, bias, noise = RATER_ROLES[i] if i < len(RATER_ROLES) else ("plain", float(rng.uniform(-0.3, 0.3)), 0.6)
        raters.append({"name": name, "role": role, "bias": bias, "noise": noise})
    return raters


def rate(rng: np.random.Generator, responses, raters) -> np.ndarray:
    """(raters x responses) integer scores in 1..5."""
    quality = np.array([QUALITY[(correct, style)] for _, correct, style in responses])
    lengths = np.array([len(text) for text, _, _ in responses], dtype=np.float64)
    span = lengths.max() - lengths.min()
    by_length = 1.0 + 4.0 * (lengths - lengths.min()) / span if span > 0 else np.full(len(lengths), 3.0)
    scores = np.empty((len(raters), len(responses)), dtype=np.int64)
    for r, rater in enumerate(raters):
        base = quality if rater["role"] != "length" else LENGTH_WEIGHT * by_length + (1 - LENGTH_WEIGHT) * quality
        noisy = base + rater["bias"] + rng.normal(0.0, rater["noise"], size=len(responses))
        scores[r] = np.clip(np.rint(noisy), 1, 5).astype(np.int64)
    return scores


# --- build ---


def make_sample_ratings(output_dir, seed: int = 0, n_charts: int = 120, n_raters: int = 5,
                        overwrite: bool = False, image_size: int = 160) -> Path:
    """Write DIR/images/*.png and DIR/ratings.csv (via a staging dir); returns the CSV's path.
    RatingsError for bad sizes; OutputExistsError (a FileExistsError) for a non-empty DIR without overwrite."""
    if n_charts < 1 or n_raters < 2 or seed < 0:
        raise RatingsError(f"need n_charts >= 1, n_raters >= 2 and seed >= 0, got {n_charts}, {n_raters}, {seed}")
    output = Path(output_dir)
    refuse_nonempty(output, overwrite)
    raters = team(n_raters, seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        target = staging / "out"
        (target / "images").mkdir(parents=True)
        with open(target / "ratings.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for i in range(n_charts):
                rng = np.random.default_rng([seed, i])
                spec = sample_chart(rng, QUESTION_TYPES)
                image = f"images/chart_{i:04d}.png"
                (target / image).write_bytes(encode_png(render_chart(spec, image_size)))
                responses = candidate_responses(rng, spec)
                scores = rate(rng, responses, raters)
                for j, (text, _, _) in enumerate(responses):
                    for r, rater in enumerate(raters):
                        writer.writerow((image, spec.query, text, rater["name"], int(scores[r, j])))
        if output.exists() or output.is_symlink():
            os.replace(output, staging / "old")  # removed with the staging dir below
        os.replace(target, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output / "ratings.csv"


# --- command line ---


def _parse_args(argv):
    parser = ArgParser(
        prog="python -m data_builders.sample_ratings",
        description="Write a sample team-ratings set (chart images + ratings.csv, response mode).",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--charts", type=positive_int, default=120, help="charts (default %(default)s)")
    parser.add_argument("--raters", type=positive_int, default=5, help="raters, at least 2 (default %(default)s)")
    parser.add_argument("--image_size", type=positive_int, default=160,
                        help="square image side in px (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    if args.raters < 2:
        parser.error("--raters must be at least 2 (agreement needs two raters)")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    refuse_nonempty(args.output, args.overwrite)  # before rendering, so a refused run costs nothing
    path = make_sample_ratings(args.output, args.seed, args.charts, args.raters, args.overwrite, args.image_size)
    names = ", ".join(r["name"] for r in team(args.raters, args.seed))
    print(f"wrote {path} ({args.charts} charts, raters {names})")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
