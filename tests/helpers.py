"""Shared test helpers (plain functions and constants; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "tiny" / "sft_chartqa.yaml"


def sft_argv(model_dir, data_dir, output_dir, *extra: str) -> list[str]:
    """The tiny default recipe pointed at the session fixtures, made short."""
    return [
        "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--dataset_name", str(data_dir),
        "--output_dir", str(output_dir),
        "--build_tiny_model", "false",
        "--synthetic_dataset", "false",
        "--logging_steps", "1",
        "--disable_tqdm", "true",
        "--num_validation_samples", "0",  # tests that check validation samples ask for them
        *extra,
    ]


# --- hostile inputs (tests/test_hostile.py and the rooms' own hostile cases) -----------------
def tree_digest(*folders) -> dict[str, str]:
    """{path: sha256 of the file, or 'dir'} of everything under `folders` (a missing folder is absent from
    the result), to assert that a refused command wrote, changed and deleted nothing."""
    import hashlib

    digest: dict[str, str] = {}
    for folder in map(Path, folders):
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*")):
            key = str(path)
            if path.is_symlink() or not path.is_file():
                digest[key] = "dir" if path.is_dir() else "other"
            else:
                digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        digest[str(folder)] = "dir"
    return digest


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, an `error: ...` last line naming what is wrong (every needle in it), no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr: {err[-2000:]}"
    assert lines and lines[-1].startswith("error: "), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, err[-2000:]
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]
