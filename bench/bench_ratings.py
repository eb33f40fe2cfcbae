"""Benchmark data_builders.ratings.build_pairs on a synthetic 1,000,000-row ratings file.

The file is realistic in shape: 2,000 tiny PNG images x 10 prompts = 20,000 groups (image,
prompt), 5 candidate responses each = 100,000 items, every item rated by 10 of a pool of 30
raters (integer scores 1-5 from a true quality + rater bias + noise) = 1,000,000 rows.
build_pairs is timed end to end (parse + validate + image checks once per distinct path, which
open every image with PIL's verify but do not decode pixels + aggregation + Krippendorff's alpha
+ pairs + the in-memory DatasetDict with the image bytes); save_to_disk is timed separately. The
same data is also read from Parquet, paired with other strategies, and read with 1.1% bad rows.

Usage:
    python -m bench.bench_ratings [--images 2000] [--prompts 10] [--responses 5] [--raters-per-item 10] \\
        [--rater-pool 30] [--repeat 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data_builders.ratings import build_pairs, save_pairs

# --- data ---

SENTENCE = "A wide valley with a barn and hills under a cloudy sky. "


def _tiny_pngs(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (37 * i % 256, 91 * i % 256, 53 * i % 256)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def make_ratings(folder: Path, n_images: int, n_prompts: int, n_responses: int, per_item: int, pool: int,
                 seed: int = 0) -> pd.DataFrame:
    """Write folder/images/*.png and return the ratings table (rows in rater-session order)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    pngs = _tiny_pngs(8)
    for i in range(n_images):
        (folder / "images" / f"img_{i:05d}.png").write_bytes(pngs[i % len(pngs)])
    n_items = n_images * n_prompts * n_responses
    item = np.repeat(np.arange(n_items), per_item)
    group = item // n_responses
    image = group // n_prompts
    prompt = group % n_prompts
    raters = np.argsort(rng.random((n_items, pool)), axis=1)[:, :per_item].ravel()  # distinct per item
    quality = rng.normal(3.0, 1.0, n_items)
    bias = rng.normal(0.0, 0.4, pool)
    score = np.clip(np.rint(quality[item] + bias[raters] + rng.normal(0, 0.7, len(item))), 1, 5).astype(int)
    image_names = np.array([f"images/img_{i:05d}.png" for i in range(n_images)], dtype=object)
    prompt_names = np.array(
        [f"A watercolour landscape with a red barn, variation {p}" for p in range(n_prompts)], dtype=object
    )
    lengths = rng.integers(20, 200, n_items)
    response_names = np.array(
        [(SENTENCE * 4)[: int(n)] + f" #{k}" for k, n in enumerate(lengths)],
        dtype=object,
    )
    frame = pd.DataFrame(
        {
            "image": image_names[image],
            "prompt": prompt_names[prompt],
            "response": response_names[item],
            "rater": np.array([f"rater_{r:02d}" for r in range(pool)], dtype=object)[raters],
            "score": score,
        }
    )
    return frame


# --- run ---


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = f"Python {platform.python_version()}, pandas {pd.__version__}, numpy {np.__version__}"
    return f"{affinity} cores usable ({os.cpu_count()} online), {model}; {versions}"


HEADER = [("case", 28), ("rows", 9), ("pairs", 7), ("build_pairs s", 13), ("read", 5), ("validate", 8),
          ("agree", 5), ("pairs", 5), ("dataset", 7), ("report", 6)]


def _row(cells) -> None:
    """One markdown table row; the first column left-aligned, numbers right-aligned."""
    text = [f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(cells)]
    print("| " + " | ".join(text) + " |")


def _timed(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ratings", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--responses", type=int, default=5)
    parser.add_argument("--raters-per-item", type=int, default=10)
    parser.add_argument("--rater-pool", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best is shown")
    parser.add_argument("--keep", type=Path, default=None, help="write the data here instead of a temp dir")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ratings-") as tmp:
        folder = args.keep or Path(tmp)
        start = time.perf_counter()
        frame = make_ratings(folder, args.images, args.prompts, args.responses, args.raters_per_item, args.rater_pool)
        frame.to_csv(folder / "ratings.csv", index=False)
        frame.to_parquet(folder / "ratings.parquet", index=False)
        # The same file with problems: 1% unparsable scores, 0.1% missing images spread through
        # it, and one out-of-scale score on the very last line (the worst case for naming lines).
        rng = np.random.default_rng(1)
        messy = frame.astype({"score": object})
        messy.loc[rng.random(len(messy)) < 0.01, "score"] = "n/a"
        messy.loc[rng.random(len(messy)) < 0.001, "image"] = "images/missing.png"
        messy.iloc[-1, messy.columns.get_loc("score")] = 9
        messy.to_csv(folder / "ratings_messy.csv", index=False)
        generated = time.perf_counter() - start
        size_mb = (folder / "ratings.csv").stat().st_size / 1e6
        print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
        print(f"machine: {_machine()}")
        print(
            f"data: {len(frame):,} rows, {args.images:,} images x {args.prompts} prompts x {args.responses} "
            f"responses, {args.raters_per_item} of {args.rater_pool} raters per item; CSV {size_mb:.0f} MB "
            f"(generated in {generated:.1f} s)"
        )
        cases = [
            ("csv, best-worst", "ratings.csv", {}),
            ("parquet, best-worst", "ratings.parquet", {}),
            ("csv, all pairs, margin 0.5", "ratings.csv", {"pairs": "all", "margin": 0.5}),
            ("csv, no z-score, adjacent", "ratings.csv", {"zscore": False, "pairs": "adjacent"}),
            ("csv with 1.1% bad rows", "ratings_messy.csv", {}),
        ]
        print()
        _row(HEADER)
        print("|" + "|".join("-" * (w + 2) for _, w in HEADER) + "|")
        first = None
        for name, file, options in cases:
            with contextlib.redirect_stderr(io.StringIO()):  # the low-alpha warning, once per run
                seconds, (dataset_dict, report) = _timed(args.repeat, lambda f=file, o=options: build_pairs(folder / f, **o))
            n_pairs = report["pairs"]["train"] + report["pairs"]["test"]
            stages = [report["timings_s"][k] for k in ("read", "validate", "agreement", "pairs", "dataset", "report")]
            cells = [name, f"{report['rows_read']:,}", f"{n_pairs:,}", f"{seconds:.2f}"] + [f"{t:.2f}" for t in stages]
            _row(list(zip(cells, (w for _, w in HEADER))))
            first = first or (dataset_dict, report)
        dataset_dict, report = first
        print()
        print("build_pairs s: the whole call, best of --repeat; the stage columns (from its last run):")
        print("  read = parse the file; validate = row checks, PIL verify of each distinct image, duplicates,")
        print("  z-scores, --min-raters; agree = Krippendorff's alpha x2 + rater table; pairs = aggregation and")
        print("  pairing; dataset = Arrow tables incl. reading the image bytes; report = naming lines of examples")
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # datasets' progress bars
            save_pairs(dataset_dict, report, folder / "pairs", overwrite=True)
        saved = time.perf_counter() - start
        a = report["agreement"]
        print()
        print(f"save_pairs (save_to_disk + report + histogram), first case: {saved:.2f} s")
        print(f"alpha interval {a['alpha_interval']:.3f}, ordinal {a['alpha_ordinal']:.3f} "
              f"on {a['alpha_items_used']:,} items ({a['alpha_method']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
