"""Which base model an adapter was trained on: a fingerprint recorded in the run folder at save time
(`base_fingerprint.json`), compared with the base a later command loads (eval, caption, export, dpo's
`sft_adapter`). A LoRA adapter loads on any base of the same architecture and then answers nonsense —
the weights it was trained against are not there — so a mismatch is refused in one line:

    another architecture   model_type or sizes differ: always refused (the adapter cannot fit)
    other weights          same architecture, other content: refused unless forced (`--force_base`),
                           then a loud warning
    no fingerprint         a run made before the fingerprint existed: one warning, then loaded

The weights part is cheap to compute: per tensor its name, dtype, shape and first 4 KiB (safetensors
headers say where each tensor is), hashed together — independent of sharding and file names. Measured:
1–5 ms for the tiny model's 77 tensors (warm / cold); a 2.2B SmolVLM has ~700 tensors, so ~3 MB read in
offset order (well under a second from disk), however large its 4.5 GB of weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.core.io import atomic_write_text

FINGERPRINT = "base_fingerprint.json"
SAMPLE_BYTES = 4096  # of each tensor
BIN_SAMPLE_BYTES = 1 << 20  # pickled checkpoints (no tensor index): the first and last MiB of each file
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "image_size", "patch_size", "scale_factor")


class BaseMismatch(UserError):
    """The base given is not the one the adapter was trained on."""


# --- where the base's files are --------------------------------------------------------------
def model_folder(name: str, revision: str | None = None) -> Path | None:
    """The local folder of a model (a path, or a hub id already in the Hugging Face cache with its
    weights); None when its weights are not on this machine (yet)."""
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        return local
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or an unusable cache: nothing to read here
        return None
    return folder if _weight_files(folder) else None


def _weight_files(folder: Path) -> list[Path]:
    safetensors = sorted(folder.glob("*.safetensors"))
    return safetensors or sorted(folder.glob("pytorch_model*.bin"))


# --- the fingerprint -------------------------------------------------------------------------
def architecture(config: dict) -> dict:
    """model_type and the sizes that decide the shape of every weight (top level, text and vision)."""
    sizes = {}
    for prefix, part in (("", config), ("text_config.", config.get("text_config")),
                         ("vision_config.", config.get("vision_config"))):
        if isinstance(part, dict):
            sizes.update({prefix + key: part[key] for key in SIZE_KEYS if isinstance(part.get(key), (int, float))})
    return {"model_type": config.get("model_type"), "sizes": sizes}


def _safetensors_tensors(path: Path) -> list[tuple[str, str, list, int, int]]:
    """(name, dtype, shape, start, end) of each tensor, offsets in the file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    base = 8 + length
    return [(name, t["dtype"], t["shape"], base + t["data_offsets"][0], base + t["data_offsets"][1])
            for name, t in header.items() if name != "__metadata__"]


def weights_digest(folder: Path) -> dict:
    """{"sha256", "tensors", "bytes", "dtype"} of the weight files in `folder` (see the module docstring)."""
    files = _weight_files(folder)
    digest = hashlib.sha256()
    total = sum(path.stat().st_size for path in files)
    if files and files[0].suffix != ".safetensors":
        for path in files:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                head = handle.read(BIN_SAMPLE_BYTES)
                handle.seek(max(size - BIN_SAMPLE_BYTES, 0))
                digest.update(f"{size}\0".encode() + head + handle.read())
        return {"sha256": digest.hexdigest(), "tensors": None, "bytes": total, "dtype": None}
    tensors = {}
    dtypes: dict[str, int] = {}
    for path in files:
        with open(path, "rb") as handle:
            for name, dtype, shape, start, end in sorted(_safetensors_tensors(path), key=lambda t: t[3]):
                handle.seek(start)
                tensors[name] = (dtype, shape, handle.read(min(SAMPLE_BYTES, end - start)))
                dtypes[dtype] = dtypes.get(dtype, 0) + 1
    for name in sorted(tensors):
        dtype, shape, sample = tensors[name]
        digest.update(f"{name}\0{dtype}\0{shape}\0".encode() + sample)
    dtype = max(dtypes, key=dtypes.get) if dtypes else None
    return {"sha256": digest.hexdigest(), "tensors": len(tensors), "bytes": total, "dtype": dtype}


def fingerprint(name: str, revision: str | None = None) -> dict | None:
    """The fingerprint of a base model; None when its files are not on this machine."""
    folder = model_folder(name, revision)
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{folder / 'config.json'}: not valid JSON ({exc})") from None
    quantized = (config.get("quantization_config") or {}).get("quant_method")
    return {"model": name, "revision": revision, **architecture(config), "quantized": quantized,
            "weights": weights_digest(folder)}


def write_fingerprint(run_dir: Path, name: str, revision: str | None = None) -> None:
    """base_fingerprint.json in a run folder (at save time); a base that cannot be read is a warning."""
    try:
        found = fingerprint(name, revision)
    except (OSError, ValueError, UserError) as exc:
        found, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = "its files are not on this machine"
    if found is None:
        print(f"warning: no {FINGERPRINT} written to {run_dir} ({why}); eval/caption/export cannot check the base",
              file=sys.stderr)
        return
    atomic_write_text(Path(run_dir) / FINGERPRINT, json.dumps(found, indent=2) + "\n")


# --- the check -------------------------------------------------------------------------------
def recorded_fingerprint(adapter: str | os.PathLike) -> tuple[Path, dict] | None:
    """(file, fingerprint) saved with an adapter: in its folder, or for a checkpoint-N in the run above."""
    folder = Path(adapter)
    places = [folder] + ([folder.parent] if re.fullmatch(r"checkpoint-\d+", folder.name) else [])
    for place in places:
        path = place / FINGERPRINT
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: not readable ({type(exc).__name__}: {exc}); delete it to skip the "
                                f"base check") from None
            if not isinstance(data, dict):
                raise UserError(f"{path}: expected a JSON object; delete it to skip the base check")
            return path, data
    return None


def _differences(saved: dict, current: dict, limit: int = 3) -> str:
    """'text_config.intermediate_size 384 (trained) vs 256', the architecture fields that differ."""
    pairs = [("model_type", saved.get("model_type"), current.get("model_type"))]
    saved_sizes, sizes = saved.get("sizes") or {}, current.get("sizes") or {}
    pairs += [(key, saved_sizes.get(key), sizes.get(key)) for key in sorted(saved_sizes.keys() | sizes.keys())]
    shown = [f"{key} {was} (trained) vs {now}" for key, was, now in pairs if was != now]
    return ", ".join(shown[:limit]) + (f", … ({len(shown)} in all)" if len(shown) > limit else "")


_warned: set[str] = set()  # adapters without a fingerprint already warned about (once per process)
_passed: set[tuple] = set()  # (adapter, base, force) already checked: a command may check before and at load


def check_base(adapter: str | os.PathLike, base: str, revision: str | None = None, force: bool = False,
               base_flag: str = "--model_name_or_path", required: bool = False) -> bool:
    """Refuse (BaseMismatch) a base the adapter was not trained on; returns False when the base's files
    are not on this machine yet (a hub id not downloaded: check again once it is, with required=True)."""
    if (str(adapter), base, force) in _passed:
        return True
    recorded = recorded_fingerprint(adapter)
    if recorded is None:
        if str(adapter) not in _warned:
            _warned.add(str(adapter))
            print(f"warning: {adapter} has no {FINGERPRINT} (a run made before vlm-tune recorded its base): "
                  f"cannot check that {base} is the base it was trained on", file=sys.stderr)
        return True
    path, saved = recorded
    current = fingerprint(base, revision)
    if current is None:
        if required:
            print(f"warning: cannot read the files of {base} to check it against {path}", file=sys.stderr)
        return required
    trained_on = saved.get("model", "?")
    if (current["model_type"], current["sizes"]) != (saved.get("model_type"), saved.get("sizes")):
        raise BaseMismatch(f"adapter {adapter} was trained on another architecture than {base_flag} {base} "
                           f"({_differences(saved, current)}; see {path}): it cannot load there; use the base it "
                           f"was trained on ({trained_on})")
    if current["weights"].get("sha256") == (saved.get("weights") or {}).get("sha256"):
        _passed.add((str(adapter), base, force))
        return True
    was, now = (saved.get("weights") or {}).get("dtype"), current["weights"].get("dtype")
    stored = f", stored as {now} where it was {was}" if was and now and was != now else ""
    what = (f"adapter {adapter} was trained on other weights than {base_flag} {base} (same architecture, "
            f"{current['model_type']}, but other content than {trained_on}{stored}; see {path})")
    if current.get("quantized") and not saved.get("quantized") and not force:
        raise BaseMismatch(f"{base_flag} {base} is a {current['quantized']}-quantized checkpoint and adapter {adapter} "
                           f"was trained on the full-precision {trained_on}: their weights cannot be compared; if "
                           f"{base} is that model quantized, pass --force_base")
    if not force:
        raise BaseMismatch(f"{what}: its answers there would be meaningless; point {base_flag} at the base it was "
                           f"trained on, or pass --force_base to use this one anyway")
    print(f"WARNING: --force_base: {what}; going on anyway, results may be meaningless", file=sys.stderr)
    _passed.add((str(adapter), base, force))
    return True
