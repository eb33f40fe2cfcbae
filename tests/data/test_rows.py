"""Formatting ChartQA rows for TRL: loss only on the answer; real ChartQA's schema loads the same way."""

from __future__ import annotations

import io
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlm_tune.data.rows import format_row, get_split, load_splits, to_prompt_completion
from vlm_tune.core.errors import UserError

HUB_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "query": datasets.Value("string"),
        "label": datasets.List(datasets.Value("string")),
        "human_or_machine": datasets.ClassLabel(names=["human", "machine"]),
    }
)


def _png(color="red", size=(120, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _hub_rows(n):
    return {
        "image": [{"bytes": _png(c), "path": None} for c in ["red", "blue", "green", "white"][:n]],
        "query": [f"What is the value of bar {i}?" for i in range(n)],
        "label": [[str(10 * (i + 1))] for i in range(n)],
        "human_or_machine": [i % 2 for i in range(n)],
    }


# --- label mask ------------------------------------------------------------------------------
@pytest.mark.parametrize("system_prompt", [None, "Answer with one word."])
def test_only_the_answer_carries_loss(tiny_model_dir, tiny_chartqa_dir, system_prompt):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    split = get_split(load_splits(str(tiny_chartqa_dir)), "train", "fixture", limit=3)
    formatted = to_prompt_completion(split, system_prompt, "fixture [train]")
    assert formatted.column_names == ["images", "prompt", "completion"]
    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    batch = collator([formatted[i] for i in range(3)])
    tokenizer = processor.tokenizer
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<fake_token_around_image>", "<global-img>")}
    for row, (ids, labels, mask) in enumerate(zip(batch["input_ids"], batch["labels"], batch["attention_mask"])):
        trained = labels != -100
        assert trained.any()
        assert not any(int(t) in image_ids for t in ids[trained]), "image tokens must not carry loss"
        assert not trained[mask == 0].any(), "padding must not carry loss"
        answer = split[row]["label"][0]
        assert tokenizer.decode(ids[trained]) == f" {answer}<end_of_utterance>\n"
        prompt_text = tokenizer.decode(ids[(~trained) & (mask == 1)])
        assert split[row]["query"] in prompt_text and "<image>" in prompt_text
        if system_prompt:
            assert system_prompt in prompt_text
        # every prompt token is masked: trained tokens are exactly the tail of the real tokens
        real = torch.nonzero(mask).flatten()
        first_trained = torch.nonzero(trained).flatten()[0]
        assert trained[first_trained : real[-1] + 1].all()


# --- ChartQA's hub schema --------------------------------------------------------------------
def test_chartqa_hub_parquet_layout_loads_and_formats(tmp_path, tiny_model_dir):
    """The hub's files: data/{train,val,test}-00000-of-00001.parquet with ChartQA's exact features."""
    (tmp_path / "data").mkdir()
    for split in ("train", "val", "test"):
        datasets.Dataset.from_dict(_hub_rows(4), features=HUB_FEATURES).to_parquet(
            tmp_path / "data" / f"{split}-00000-of-00001.parquet"
        )
    splits = load_splits(str(tmp_path))
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].features == HUB_FEATURES
    formatted = to_prompt_completion(get_split(splits, "val", "chartqa"), None, "chartqa [val]")
    assert formatted[1]["completion"] == [{"role": "assistant", "content": "20"}]
    assert formatted[1]["prompt"][-1]["content"] == "What is the value of bar 1?"
    assert formatted[1]["images"][0].size == (120, 90)


def test_plain_parquet_without_hf_metadata(tmp_path):
    """A parquet written by other tools: image as a {bytes, path} struct, no datasets feature metadata."""
    rows = _hub_rows(3)
    table = pa.table({**rows, "human_or_machine": pa.array(rows["human_or_machine"], pa.int64())})
    pq.write_table(table, tmp_path / "chartqa.parquet")
    splits = load_splits(str(tmp_path / "chartqa.parquet"))
    formatted = to_prompt_completion(get_split(splits, "train", "x"), None, "x [train]")
    assert [r[0]["content"] for r in formatted["completion"]] == ["10", "20", "30"]
    assert formatted[2]["images"][0].mode == "RGB"


# --- errors ----------------------------------------------------------------------------------
def test_missing_columns_named(tmp_path):
    datasets.Dataset.from_dict({"image": [_png()], "question": ["q"]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(UserError, match=r"lacks column\(s\) query, label"):
        get_split(load_splits(str(tmp_path / "x.parquet")), "train", str(tmp_path / "x.parquet"))


def test_missing_split_and_missing_path(tmp_path, tiny_chartqa_dir):
    with pytest.raises(UserError, match="has no split 'validation'"):
        get_split(load_splits(str(tiny_chartqa_dir)), "validation", "fixture")
    with pytest.raises(UserError, match="dataset not found: ./nowhere"):
        load_splits("./nowhere")


def test_unreadable_image_names_the_row(tmp_path):
    rows = _hub_rows(3)
    rows["image"][2] = {"bytes": b"not a png at all", "path": None}
    datasets.Dataset.from_dict(rows, features=HUB_FEATURES).to_parquet(tmp_path / "bad.parquet")
    split = get_split(load_splits(str(tmp_path / "bad.parquet")), "train", "bad")
    with pytest.raises(UserError, match=r"bad.parquet \[train\] row 2: unreadable image"):
        to_prompt_completion(split, None, f"{tmp_path / 'bad.parquet'} [train]")


def test_bad_label_names_the_row():
    row = {"image": {"bytes": _png(), "path": None}, "query": "q", "label": 7}
    with pytest.raises(UserError, match=r"^x \[train\] row 4: bad label 7 \(") as excinfo:
        format_row(row, None, "x [train]", 4)
    assert "\n" not in str(excinfo.value)
    assert format_row(dict(row, label=["7"]), None, "x [train]", 4)["completion"][0]["content"] == "7"


# --- checks before training ------------------------------------------------------------------
def _split(tmp_path, rows, features=HUB_FEATURES, name="x"):
    path = tmp_path / f"{name}.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(path)
    return load_splits(str(path))


def test_check_rows_names_the_split_and_row_of_a_broken_image_without_decoding_all(tmp_path):
    from vlm_tune.data.rows import check_rows

    rows = _hub_rows(4)
    rows["image"][3] = {"bytes": _png()[:60], "path": None}  # truncated PNG
    split = get_split(_split(tmp_path, rows), "train", "x")
    check_rows(split, "x [test]", indices=[0, 1, 2])  # the rows a run uses are fine
    with pytest.raises(UserError, match=r"^x \[test\] row 3: unreadable image") as excinfo:
        check_rows(split, "x [test]")
    assert "\n" not in str(excinfo.value)

    rows = _hub_rows(3)
    rows["label"][1] = []
    with pytest.raises(UserError, match=r"x \[val\] row 1: bad label \[\] \(empty label\)"):
        check_rows(get_split(_split(tmp_path, rows, name="y"), "train", "y"), "x [val]")


def test_check_rows_is_cheap(tmp_path):
    """Images are verified, not decoded: 200 rows of 800x600 charts in well under a second."""
    import time

    from vlm_tune.data.rows import check_rows

    big = _png(size=(800, 600))
    rows = {"image": [{"bytes": big, "path": None}] * 200, "query": ["q"] * 200, "label": [["1"]] * 200,
            "human_or_machine": [0] * 200}
    split = get_split(_split(tmp_path, rows), "train", "x")
    started = time.perf_counter()
    check_rows(split, "x [train]")
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("column, values, feature, message", [
    ("label", [7, 8], datasets.Value("int64"), "column 'label' holds int64, expected text or a list of texts"),
    ("label", [[1], [2]], datasets.List(datasets.Value("int64")), "column 'label' holds a list of int64"),
    ("query", [1.5, 2.5], datasets.Value("float64"), "column 'query' holds float64, expected text"),
])
def test_wrong_column_types_are_named(tmp_path, column, values, feature, message):
    rows = {k: v[:2] for k, v in _hub_rows(2).items()}
    rows[column] = values
    features = datasets.Features({**HUB_FEATURES, column: feature})
    with pytest.raises(UserError, match=re.escape(f"dataset x [train]: {message}")):
        get_split(_split(tmp_path, rows, features), "train", "x")


def test_empty_split_is_refused(tmp_path):
    empty = datasets.Dataset.from_dict({k: [] for k in _hub_rows(1)}, features=HUB_FEATURES)
    with pytest.raises(UserError, match=r"dataset x \[train\] is empty \(0 rows\)"):
        get_split(datasets.DatasetDict({"train": empty}), "train", "x")
    # saved with save_to_disk, an empty split has no shards, which datasets itself cannot load
    full = datasets.Dataset.from_dict(_hub_rows(2), features=HUB_FEATURES)
    datasets.DatasetDict({"train": full, "test": empty}).save_to_disk(tmp_path / "d")
    with pytest.raises(UserError, match=r"^dataset \S+/d \[test\] is empty \(0 rows\)$"):
        load_splits(str(tmp_path / "d"))
