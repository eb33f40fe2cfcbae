"""`vlm-tune caption`: caption a Stable-Diffusion LoRA image folder with the (fine-tuned) VLM.

    vlm-tune caption IMAGES_DIR --adapter runs/tiny-sft-captioner --format both --mode dual --trigger sks
    vlm-tune caption IMAGES_DIR --model HuggingFaceTB/SmolVLM-256M-Instruct --format kohya

the adapter's base checked (`core.fingerprint`) → find images → read the captions already there →
check the folders to write in (`caption.folder_checks`: read-only, caption paths that are folders, symlink
loops — one line before anything is written) → load model → caption in batches → write each batch
(atomically; a full disk is one line, the whole files kept) → QA report. Formats (`vlm_tune.caption.formats`): kohya sd-scripts (a sidecar
`<stem><ext>` beside each image, UTF-8, first line read) and diffusers (`metadata.jsonl` rows
`{"file_name", "text"}` at the root). A caption already present in either format is the caption of
record: it is never replaced without `--overwrite`, and a missing format is filled from it, so both
formats always agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from vlm_tune.caption.folder_checks import check_not_folders, check_writable, find_images_checked, writing
from vlm_tune.caption.formats import (
    METADATA,
    caption_lines,
    check_extensions,
    metadata_value,
    read_metadata,
    read_sidecar,
    sidecar_of,
    write_metadata,
    write_sidecar,
)
from vlm_tune.caption.qa_report import print_summary, write_qa_report
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.fingerprint import check_base
from vlm_tune.core.images import MAX_PIXELS, open_image, safe_join
from vlm_tune.core.prompts import DEFAULT_PROMPTS
from vlm_tune.core.text import collapse_char_loops, printable, trim_loops

MODES = ("caption", "tags", "dual")
FORMATS = ("kohya", "diffusers", "both")


# --- arguments -------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def add_model_loading_args(p) -> None:
    """The flags `load_captioner` reads (how the base and adapter load); shared with `vlm-tune candidates`."""
    p.add_argument("--load_in_4bit", type=_bool, help="NF4 base weights (default: as the adapter was trained)")
    p.add_argument("--keep_4bit", action="store_true",
                   help="CPU: keep the 4-bit layers (less memory) instead of dequantizing them (faster, same weights)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), help="compute dtype (auto: bf16 on GPU)")
    p.add_argument("--do_image_splitting", type=_bool, help="split images into tiles (default: as trained)")
    p.add_argument("--image_longest_edge", type=int, help="resize images to this longest edge (default: as trained)")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--force_base", action="store_true",
                   help="use the adapter on --model even if it was trained on other weights")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgParser(prog="vlm-tune caption", description="Caption an image folder for kohya sd-scripts and/or diffusers.")
    p.add_argument("images_dir", help="dataset root; images are found recursively (png, jpg, jpeg, webp, bmp)")
    p.add_argument("--model", help="base model folder or hub id (default: the model in ADAPTER/recipe.yaml)")
    p.add_argument("--adapter", help="LoRA adapter folder, e.g. a `vlm-tune sft` run's output_dir")
    p.add_argument("--format", choices=FORMATS, default="kohya", help="kohya sidecars, diffusers metadata.jsonl, or both")
    p.add_argument("--caption_extension", default=".txt",
                   help="kohya sidecar extension (default .txt; pass the same to sd-scripts' --caption_extension)")
    p.add_argument("--caption_column", default="text", help="diffusers caption column (its --caption_column)")
    p.add_argument("--mode", choices=MODES, default="caption",
                   help="caption: one sentence; tags: comma-separated; dual: both (kohya: tags line + sentence line "
                        "for --enable_wildcard; diffusers: a list of two captions, one picked per step)")
    p.add_argument("--trigger", help="trigger word put first in every caption (use keep_tokens=1 in kohya)")
    p.add_argument("--prompt", default=DEFAULT_PROMPTS["caption"], help="question asked for sentence captions")
    p.add_argument("--tags_prompt", default=DEFAULT_PROMPTS["tags"], help="question asked for tags")
    p.add_argument("--system_prompt", help="optional system message (default: the adapter's recipe's)")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--num_beams", type=int, default=1, help="1: greedy (fast); >1: beam search")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help=">1 discourages repeated tokens")
    p.add_argument("--no_repeat_ngram_size", type=int, default=0, help="forbid repeating any n-gram of this size")
    p.add_argument("--batch_size", type=int, default=8, help="images per generate call (lower on out-of-memory)")
    p.add_argument("--overwrite", action="store_true", help="re-caption images that already have a caption")
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed or was refused")
    p.add_argument("--report_dir", help="where caption_report.json/.md go (default: IMAGES_DIR)")
    p.add_argument("--limit", type=int, help="caption at most N images this run (a rerun continues)")
    p.add_argument("--max_pixels", type=int, default=MAX_PIXELS, help="refuse larger images (decompression bombs)")
    add_model_loading_args(p)
    args = p.parse_args(argv)
    if not args.caption_extension.startswith("."):
        args.caption_extension = "." + args.caption_extension
    for name in ("batch_size", "max_new_tokens", "num_beams"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    if args.trigger is not None and (not args.trigger.strip() or "," in args.trigger or "\n" in args.trigger):
        raise UserError(f"--trigger must be a non-empty word without commas or newlines, got {args.trigger!r}")
    return args


def training_settings(adapter: str | None) -> dict:
    """What the adapter was trained with (its run's recipe.yaml): the base model and image settings."""
    if not adapter:
        return {}
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter in {adapter} (adapter_config.json missing)")
    recipe = folder / "recipe.yaml"
    try:
        settings = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}) if recipe.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{recipe}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(settings, dict):
        raise UserError(f"{recipe}: expected a mapping of recipe keys")
    return settings


def model_name(args, trained: dict) -> str:
    """The base to caption with; with an adapter, checked to be the base it was trained on (core.fingerprint)."""
    name = args.model or trained.get("model_name_or_path")
    if not name:
        raise UserError("no model: pass --model (or an --adapter whose folder holds the run's recipe.yaml)")
    if args.adapter:  # before anything is written; a hub id not downloaded yet is checked once it has loaded
        check_base(args.adapter, name, None, getattr(args, "force_base", False), "--model")
    return name


# --- caption text ----------------------------------------------------------------------------
def clean_caption(raw: str, kind: str, trigger: str | None) -> str:
    """One line, printable, no loop, trigger first exactly once; tags de-duplicated. '' if nothing is left."""
    text = raw.replace("\r", "\n").split("\n")[0]
    text = trim_loops(collapse_char_loops(printable(text)))
    if kind == "tags":
        tags, seen = [], set()
        for tag in (t.strip(" .") for t in text.split(",")):
            if tag and tag.lower() not in seen:
                seen.add(tag.lower())
                tags.append(tag)
        text = ", ".join(tags)
    if trigger:
        first, _, rest = text.partition(",")
        if first.strip().lower() == trigger.lower():
            text = rest.strip()
        if not text:
            return ""
        text = f"{trigger}, {text}"
    return text


# --- the folder ------------------------------------------------------------------------------
@dataclass
class Folder:
    """The image folder as this run found it and what the run did to it; each step reads and fills it."""

    root: Path
    kohya: bool  # write kohya sidecars
    diffusers: bool  # write metadata.jsonl
    images: list[str]  # relative POSIX paths, sorted
    refused: list[tuple[str, str]]  # (image, reason) find_images would not open
    rows: list[dict]  # metadata.jsonl rows in file order (the file is rewritten whole, other rows kept)
    row_of: dict[str, dict]  # image -> its metadata.jsonl row
    failed: list[dict] = field(default_factory=list)  # {"file", "reason"}: not captioned
    problems: list[dict] = field(default_factory=list)  # {"file", "reason"}: captioned or kept, worth a note
    existing: dict[str, list[str]] = field(default_factory=dict)  # image -> caption of record (lines)
    todo: list[str] = field(default_factory=list)  # images to caption in this run
    skipped: list[str] = field(default_factory=list)  # images whose caption is kept
    left_for_later: int = 0  # over --limit
    filled: int = 0  # captions copied into the missing format
    written: list[str] = field(default_factory=list)
    seconds: float = 0.0  # captioning time, model loading excluded

    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA


def open_folder(args, root: Path) -> Folder:
    """Images and metadata.jsonl rows; a row escaping the root stops the run before anything is written."""
    kohya, diffusers = args.format in ("kohya", "both"), args.format in ("diffusers", "both")
    images, refused = find_images_checked(root)
    check_not_folders({rel: sidecar_of(root, rel, args.caption_extension) for rel in images} if kohya else {},
                      root / METADATA if diffusers else None)
    if kohya:
        check_extensions(root, images, args.caption_extension)
    rows = read_metadata(root / METADATA, args.caption_column) if diffusers else []
    row_of = {}
    for row in rows:
        try:
            safe_join(root, row["file_name"])
        except ValueError as exc:
            raise UserError(f"{root / METADATA}: {exc}; fix the row before captioning") from None
        row_of[row["file_name"]] = row
    folder = Folder(root, kohya, diffusers, images, refused, rows, row_of)
    folder.failed = [{"file": rel, "reason": reason} for rel, reason in refused]
    return folder


def find_existing_captions(args, folder: Folder) -> None:
    """The caption of record of each image (sidecar first, then metadata) and what is left to caption."""
    sidecar_owner: dict[Path, str] = {}
    for rel in folder.images:
        if folder.kohya:
            sidecar = sidecar_of(folder.root, rel, args.caption_extension)
            if sidecar in sidecar_owner:  # a.png and a.jpg in one folder: kohya pairs captions by stem
                folder.failed.append({"file": rel, "reason": f"shares kohya caption file {sidecar.name} "
                                                             f"with {sidecar_owner[sidecar]}"})
                continue
            sidecar_owner[sidecar] = rel
            if sidecar.exists():
                lines, problem = read_sidecar(sidecar)
                if problem:
                    folder.problems.append({"file": rel, "reason": problem + " (left as is)"})
                folder.existing[rel] = lines or []  # an empty file is still the user's: kept, and flagged by the QA
        if rel not in folder.existing and rel in folder.row_of:
            folder.existing[rel] = caption_lines(folder.row_of[rel].get(args.caption_column)) or []
        if args.overwrite or rel not in folder.existing:
            folder.todo.append(rel)
    folder.skipped = [rel for rel in folder.images if rel in folder.existing and rel not in folder.todo]
    todo = folder.todo
    folder.left_for_later = len(todo) - min(len(todo), args.limit if args.limit is not None else len(todo))
    folder.todo = todo[: len(todo) - folder.left_for_later]


def folders_written(args, folder: Folder) -> set[Path]:
    """Where this run may write captions: beside the images to caption (and those whose kohya caption is
    filled in), and the root for metadata.jsonl."""
    folders = {folder.root} if folder.diffusers and (folder.todo or folder.skipped) else set()
    if folder.kohya:
        folders |= {sidecar_of(folder.root, rel, args.caption_extension).parent for rel in folder.todo}
        folders |= {sidecar_of(folder.root, rel, args.caption_extension).parent for rel in folder.skipped
                    if not sidecar_of(folder.root, rel, args.caption_extension).exists()}
    return folders


def fill_missing_formats(args, folder: Folder) -> None:
    """Copy each kept caption into the format that lacks it, so kohya and diffusers agree."""
    for rel in folder.skipped:
        lines = folder.existing[rel]
        if not lines:
            continue
        sidecar = sidecar_of(folder.root, rel, args.caption_extension)
        if folder.kohya and not sidecar.exists():
            write_sidecar(sidecar, lines)
            folder.filled += 1
        if folder.diffusers and caption_lines((folder.row_of.get(rel) or {}).get(args.caption_column)) is None:
            folder.row_of.setdefault(rel, {"file_name": rel})[args.caption_column] = metadata_value(lines)
            if folder.row_of[rel] not in folder.rows:
                folder.rows.append(folder.row_of[rel])
            folder.filled += 1
    if folder.diffusers and folder.filled:
        write_metadata(folder.metadata_path, folder.rows)


# --- model -----------------------------------------------------------------------------------
def load_captioner(args, trained: dict):
    from trl import ModelConfig

    from vlm_tune.core.modeling import load_for_inference

    load_in_4bit = args.load_in_4bit if args.load_in_4bit is not None else bool(trained.get("load_in_4bit", False))
    model_args = ModelConfig(
        model_name_or_path=model_name(args, trained),
        dtype=args.dtype or trained.get("dtype") or "auto",
        load_in_4bit=load_in_4bit,
        bnb_4bit_quant_type=trained.get("bnb_4bit_quant_type", "nf4"),
        use_bnb_nested_quant=bool(trained.get("use_bnb_nested_quant", True)),
    )
    splitting = args.do_image_splitting if args.do_image_splitting is not None else trained.get("do_image_splitting")
    longest_edge = args.image_longest_edge or trained.get("image_longest_edge")
    return load_for_inference(model_args, args.trust_remote_code, longest_edge, splitting, args.adapter,
                              dequantize_on_cpu=not args.keep_4bit, force_base=getattr(args, "force_base", False),
                              base_flag="--model")


@dataclass
class Captioner:
    """A loaded model and what to ask it: one caption per kind (a tag line, a sentence, or both)."""

    model: object
    processor: object
    kinds: list[str]
    prompts: dict[str, str]
    system_prompt: str | None
    generate_kwargs: dict

    @classmethod
    def load(cls, args, trained: dict) -> "Captioner":
        model, processor = load_captioner(args, trained)
        return cls(model, processor,
                   kinds={"caption": ["caption"], "tags": ["tags"], "dual": ["tags", "caption"]}[args.mode],
                   prompts={"caption": args.prompt, "tags": args.tags_prompt},
                   system_prompt=args.system_prompt or trained.get("system_prompt"),
                   generate_kwargs={"num_beams": args.num_beams, "repetition_penalty": args.repetition_penalty,
                                    "no_repeat_ngram_size": args.no_repeat_ngram_size})

    def caption(self, images: list, max_new_tokens: int, trigger: str | None) -> dict[str, list[str]]:
        """{kind: cleaned caption of each image}, one batched generate call per kind."""
        from vlm_tune.core.generation import generate_answers

        outputs = {}
        for kind in self.kinds:
            raw = generate_answers(self.model, self.processor, images, [self.prompts[kind]] * len(images),
                                   self.system_prompt, batch_size=len(images), max_new_tokens=max_new_tokens,
                                   show_progress=False, **self.generate_kwargs)
            outputs[kind] = [clean_caption(text, kind, trigger) for text in raw]
        return outputs


# --- caption in batches ----------------------------------------------------------------------
def open_batch(args, folder: Folder, batch: list[str]) -> list[tuple[str, object]]:
    """(image, PIL image) of each image that opens; the others are listed as failed."""
    opened = []
    for rel in batch:
        image, note = open_image(folder.root / rel, args.max_pixels)
        if image is None:
            folder.failed.append({"file": rel, "reason": note})
        else:
            opened.append((rel, image))
            if note:
                folder.problems.append({"file": rel, "reason": note + " (converted for captioning)"})
    return opened


def write_batch(args, folder: Folder, names: list[str], captions: list[list[str]]) -> None:
    """Sidecars first, then metadata.jsonl; each file is replaced atomically, so a kill leaves whole files."""
    for rel, lines in zip(names, captions):
        if not all(lines):
            folder.failed.append({"file": rel, "reason": "the model produced an empty caption (not written)"})
            continue
        if folder.kohya:
            write_sidecar(sidecar_of(folder.root, rel, args.caption_extension), lines)
        if folder.diffusers:
            row = folder.row_of.get(rel)
            if row is None:
                row = folder.row_of[rel] = {"file_name": rel}
                folder.rows.append(row)
            row[args.caption_column] = metadata_value(lines)
        folder.existing[rel] = lines
        folder.written.append(rel)
    if folder.diffusers and names:
        write_metadata(folder.metadata_path, folder.rows)


def caption_all(args, folder: Folder, captioner: Captioner) -> None:
    started = time.perf_counter()  # throughput of captioning, not of loading the model
    with tqdm(total=len(folder.todo), desc="Captioning", unit="img", dynamic_ncols=True) as bar:
        for start in range(0, len(folder.todo), args.batch_size):
            batch = folder.todo[start : start + args.batch_size]
            opened = open_batch(args, folder, batch)
            if opened:
                outputs = captioner.caption([image for _, image in opened], args.max_new_tokens, args.trigger)
                captions = [[outputs[kind][i] for kind in captioner.kinds] for i in range(len(opened))]
                with writing(folder.root, folder.written):  # a full disk: one line, the whole files are kept
                    write_batch(args, folder, [rel for rel, _ in opened], captions)
            bar.update(len(batch))
    folder.seconds = time.perf_counter() - started


# --- command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    root = Path(args.images_dir)
    if not root.is_dir():
        raise UserError(f"images folder not found: {args.images_dir}")
    trained = training_settings(args.adapter)
    if args.adapter:
        model_name(args, trained)  # an adapter on another base: one line before anything is written

    folder = open_folder(args, root)
    find_existing_captions(args, folder)
    check_writable(folders_written(args, folder), Path(args.report_dir or root))  # read-only: before any write
    with writing(root, folder.written):
        fill_missing_formats(args, folder)
    skipped = folder.skipped
    print(f"{root}: {len(folder.images)} image(s); {len(skipped)} already captioned "
          f"(kept{', --overwrite not set' if skipped else ''}); {len(folder.todo)} to caption; "
          f"{len(folder.refused)} refused")
    if folder.todo:
        caption_all(args, folder, Captioner.load(args, trained))

    with writing(root, folder.written):
        report, json_path, md_path = write_qa_report(args, folder)
    print_summary(folder, report, json_path, md_path)
    return 1 if args.strict and folder.failed else 0
