"""`vlm-tune export`: merge a run's LoRA adapter into its base → a plain Hugging Face model folder, verified.

    vlm-tune export --adapter RUN --output DIR [--base PATH] [--dtype bfloat16|float32] [--overwrite]
                    [--rows N] [--merge_into trained|original] [--dataset PATH] [--force_base]

load the run and its base → merge in fp32 → cast → save (safetensors, config, generation config, processor)
→ load the saved folder the plain way and compare it with the adapter on held-out rows → export_report.json
+ model card → rename into DIR. Everything is written in a hidden folder beside DIR and renamed at the end:
an export that is killed or fails its check leaves DIR as it was (nothing that looks finished).
The base must be the one the adapter was trained on (the run's base_fingerprint.json, `core.fingerprint`):
another architecture is one line, other weights too unless --force_base.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from data_builders._common import is_nonempty, positive_int, staged_replace
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.fingerprint import check_base
from vlm_tune.core.markdown import fmt, pct
from vlm_tune.export.card import model_card
from vlm_tune.export.merge import folder_processor, merge, run_processor, save_merged
from vlm_tune.export.source import EXPORT_DTYPES, MERGE_TARGETS, RunSource, describe_merge, read_run
from vlm_tune.export.verify import held_out, verify

REPORT = "export_report.json"


class ExportCheckFailed(UserError):
    """The merged model does not answer like the adapter within the documented tolerance."""


# --- arguments -------------------------------------------------------------------------------------
def parse_args(argv: list[str]):
    parser = ArgParser(prog="vlm-tune export", description="Merge a LoRA adapter into its base: a plain HF model folder.")
    parser.add_argument("--adapter", required=True, help="run folder of vlm-tune sft/dpo (adapter + processor + recipe)")
    parser.add_argument("--output", required=True, help="folder to write (refused if not empty, unless --overwrite)")
    parser.add_argument("--base", help="base model folder or hub id (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, help="weights of the export (default: the base's own dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--rows", type=positive_int, default=32, help="held-out rows the greedy answers are compared on")
    parser.add_argument("--merge_into", choices=MERGE_TARGETS, default="trained",
                        help="trained: the base as the adapter was trained on it (QLoRA: 4-bit, dequantized; exact); "
                             "original: the full-precision base (a QLoRA adapter then answers a little differently)")
    parser.add_argument("--dataset", help="held-out data to verify on (default: the run's recipe dataset_name)")
    parser.add_argument("--force_base", action="store_true",
                        help="merge into --base even if the adapter was trained on other weights (a loud warning)")
    return parser.parse_args(argv)


def check_output(output: str, overwrite: bool, source: RunSource) -> Path:
    """DIR must be empty (or --overwrite), and replacing it must not delete the run or the base."""
    path = Path(os.path.expanduser(output))
    if is_nonempty(path) and not overwrite:
        raise UserError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
    protected = {"the run folder": source.run_dir, "the base model": Path(os.path.expanduser(source.base))}
    for what, folder in protected.items():
        if folder.exists() and (path.resolve() == folder.resolve() or path.resolve() in folder.resolve().parents):
            raise UserError(f"--output {output} would replace {what} ({folder}); pick another folder")
    return path


# --- export ----------------------------------------------------------------------------------------
def write_export(folder: Path, source: RunSource, split, dtype: str, header: dict) -> dict:
    """Merge, save, verify and describe into `folder`; raises ExportCheckFailed after writing the report."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    save_merged(merge(source, dtype), run_processor(source), folder)
    report = {**header, **verify(source, folder, split, folder_processor(folder), dtype)}  # as saved
    report["seconds"] = round(time.perf_counter() - started, 1)
    (folder / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(model_card(source, report), encoding="utf-8")
    print_check(report)
    if not report["passed"]:
        hint = " (try --dtype float32)" if dtype != "float32" else ""
        hint += " (try --merge_into trained)" if source.merge_into == "original" and source.trained_quantized else ""
        raise ExportCheckFailed(f"export check failed: {'; '.join(report['failures'])}: the merged model does not "
                                f"answer like the adapter{hint}; nothing was written to {header['output']}")
    return report


def print_check(report: dict) -> None:
    answers, logits = report["answers"], report["logits"]
    print(f"\nexport check ({report['dtype']}, {report['merged_into']}) on {answers['rows']} held-out rows:")
    print(f"  {answers['metric']}: adapter {pct(answers['adapter'])}, merged {pct(answers['merged'])}")
    print(f"  identical greedy answers: {pct(answers['agreement'])}   "
          f"(needs >= {pct(report['tolerance']['min_answer_agreement'])})")
    print(f"  max |Δlogit| {fmt(logits['max_abs_diff'])} (bound {fmt(report['tolerance']['max_abs_logit_diff'])}), "
          f"top-1 agreement {pct(logits['top1_agreement'])} over {logits['positions']} positions")
    for row in answers["disagreements"]:
        print(f"  row {row['row']}: adapter {row['adapter']!r} vs merged {row['merged']!r}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    source = read_run(args.adapter, args.base, args.merge_into)
    source.force_base = args.force_base
    # the base the adapter was trained on (core.fingerprint); a hub id not downloaded yet: once it has loaded
    check_base(source.run_dir, source.base, None, args.force_base, "--base")
    output = check_output(args.output, args.overwrite, source)
    dtype = args.dtype or source.base_dtype()
    split = held_out(source, args.dataset, args.rows)  # before the merge: missing data fails fast
    header = {"name": output.name, "output": str(output), "adapter": str(source.run_dir), "base": source.base,
              "merged_into": source.merge_into, "merge": describe_merge(source), "dtype": dtype,
              "dataset": args.dataset or source.recipe.get("dataset_name"),
              "split": source.recipe.get("dataset_test_split", "test")}
    report: dict = {}
    staged_replace(output, args.overwrite, lambda folder: report.update(write_export(folder, source, split, dtype, header)))
    print(f"wrote {output} (plain Transformers model; {REPORT}, README.md)")
    return report
