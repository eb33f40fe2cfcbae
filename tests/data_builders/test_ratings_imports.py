"""Argilla v2 and Label Studio exports read by data_builders.ratings: hand-made files in each tool's
schema give the same pairs as the equivalent ratings CSV; what is not a team rating is skipped and
counted; a broken record is one error line naming it."""

import base64
import io
import json

import pandas as pd
import pytest
from PIL import Image

from data_builders.ratings import ImportFields, RatingsError, build_pairs, main, render_report_md
from vlm_tune.core.errors import run_command

# --- the ratings every export below holds ---

COLORS = {"a.png": (220, 30, 30), "b.png": (30, 60, 220)}
# (image, prompt, response) -> scores of Ana, Ben, Cem
RATED = {
    ("a.png", "How many bars?", "3"): (5, 4, 5),
    ("a.png", "How many bars?", "Maybe four bars, I think."): (2, 1, 2),
    ("a.png", "How many bars?", "5"): (1, 2, 1),
    ("b.png", "What colour is it?", "Blue."): (4, 5, 4),
    ("b.png", "What colour is it?", "Red."): (1, 1, 2),
}
RATERS = ("Ana", "Ben", "Cem")


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(folder):
    for name, color in COLORS.items():
        (folder / name).write_bytes(_png(color))


def _csv(folder):
    rows = [(img, prompt, resp, rater, score) for (img, prompt, resp), scores in RATED.items()
            for rater, score in zip(RATERS, scores)]
    path = folder / "ratings.csv"
    pd.DataFrame(rows, columns=["image", "prompt", "response", "rater", "score"]).to_csv(path, index=False)
    return path


def _pairs(path, **kwargs):
    dataset_dict, report = build_pairs(path, pairs="all", test_size=0, **kwargs)
    rows = [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"], r["chosen_score"])
            for r in dataset_dict["train"]]
    return rows, report, dataset_dict


def _argilla_records(image=lambda name: name):
    """Flattened records as `dataset.records.to_datasets()` / `to_list(flatten=True)` write them."""
    records = []
    for k, ((img, prompt, resp), scores) in enumerate(RATED.items()):
        records.append({
            "id": f"r{k}", "_server_id": f"uuid-{k}", "status": "completed",
            "image": image(img), "prompt": prompt, "response": resp,
            "quality.responses": [*scores, 3],  # a fourth user's draft does not count
            "quality.responses.users": [*RATERS, "Dee"],
            "quality.responses.status": ["submitted"] * 3 + ["draft"],
            "comment.responses": ["ok"], "comment.responses.users": ["Ana"],  # a text question: not a rating
            "comment.responses.status": ["submitted"],
        })
    return records


def _labelstudio_tasks():
    tasks = []
    for k, ((img, prompt, resp), scores) in enumerate(RATED.items()):
        annotations = [
            {"id": 100 * k + j, "completed_by": user, "was_cancelled": False,
             "result": [{"from_name": "quality", "to_name": "img", "type": "rating", "value": {"rating": score}},
                        {"from_name": "kind", "to_name": "img", "type": "choices", "value": {"choices": ["x"]}}]}
            for j, (user, score) in enumerate(zip(({"id": 1, "email": "Ana"}, {"id": 2, "email": "Ben"}, 3), scores))
        ]
        annotations.append({"id": 100 * k + 9, "completed_by": 4, "was_cancelled": True,
                            "result": [{"from_name": "quality", "type": "rating", "value": {"rating": 1}}]})
        annotations.append({"id": 100 * k + 8, "completed_by": 5,
                            "result": [{"from_name": "kind", "type": "choices", "value": {"choices": ["y"]}}]})
        tasks.append({"id": 7 + k, "data": {"image": f"/data/local-files/?d={img}", "prompt": prompt, "response": resp},
                      "annotations": annotations,
                      "predictions": [{"result": [{"from_name": "quality", "type": "rating", "value": {"rating": 5}}]}]})
    return tasks


# --- Argilla ---


def test_argilla_json_gives_the_csv_pairs(tmp_path):
    _images(tmp_path)
    expected, csv_report, _ = _pairs(_csv(tmp_path))
    export = tmp_path / "argilla.json"
    export.write_text(json.dumps(_argilla_records()), encoding="utf-8")
    rows, report, _ = _pairs(export)
    assert rows == expected
    assert report["format"] == "argilla" and report["mode"] == "response"
    assert report["agreement"]["alpha_interval"] == csv_report["agreement"]["alpha_interval"]
    assert report["import"] == {"format": "argilla", "question": "quality", "records": 5, "ratings": 15,
                                "skipped": {"draft response (only submitted ones count)": 5}}
    assert {r["rater"] for r in report["raters"]} == set(RATERS)
    assert "imported from an Argilla export: 15 ratings" in render_report_md(report)
    # datasets' to_json writes JSON lines, whatever the extension
    lines = tmp_path / "to_json.json"
    lines.write_text("\n".join(json.dumps(r) for r in _argilla_records()) + "\n", encoding="utf-8")
    assert _pairs(lines)[0] == expected


def test_argilla_parquet_with_embedded_images_and_nested_json(tmp_path):
    _images(tmp_path)
    expected, _, _ = _pairs(_csv(tmp_path))
    # to_datasets() casts image fields to datasets.Image: Parquet holds {bytes, path}, no file needed
    records = _argilla_records(lambda name: {"bytes": _png(COLORS[name]), "path": None})
    pd.DataFrame(records).to_parquet(tmp_path / "export.parquet", index=False)
    (tmp_path / "a.png").unlink()
    (tmp_path / "b.png").unlink()
    rows, report, dataset_dict = _pairs(tmp_path / "export.parquet")
    assert rows == expected and report["dropped"]["missing image"] == 0
    first = dataset_dict["train"][0]["images"][0].convert("RGB").getpixel((0, 0))
    assert first in COLORS.values()
    # the nested records of dataset.records.to_json(), images as data URIs
    uri = {name: "data:image/png;base64," + base64.b64encode(_png(c)).decode() for name, c in COLORS.items()}
    nested = [{"id": r["id"], "fields": {"image": uri[img], "prompt": r["prompt"], "response": r["response"]},
               "metadata": {}, "suggestions": {}, "vectors": {}, "_server_id": r["_server_id"],
               "responses": {"quality": [{"value": v, "user_id": u} for v, u in
                                         zip(r["quality.responses"][:3], r["quality.responses.users"])]}}
              for r, img in zip(_argilla_records(), [k[0] for k in RATED])]
    (tmp_path / "nested.json").write_text(json.dumps(nested), encoding="utf-8")
    rows, report, _ = _pairs(tmp_path / "nested.json")
    assert rows == expected and report["import"]["skipped"] == {}


def test_argilla_field_names_and_question_flags(tmp_path, capsys):
    _images(tmp_path)
    expected, _, _ = _pairs(_csv(tmp_path))
    records = _argilla_records()
    for record in records:
        record["question"] = record.pop("prompt")  # the team called its prompt field "question"
        record["clarity.responses"] = record["quality.responses"]  # a second rating question
        record["clarity.responses.users"] = record["quality.responses.users"]
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_command(main, ["--ratings", str(export), "--output", str(out)]) == 2
    assert "several rating questions with numeric answers (clarity, quality); pass --question" in capsys.readouterr().err
    assert run_command(main, ["--ratings", str(export), "--output", str(out), "--question", "quality"]) == 2
    assert "no record has a field 'prompt' (fields: " in capsys.readouterr().err
    fields = ImportFields(prompt="question", question="quality")
    rows, report, _ = _pairs(export, fields=fields)
    assert rows == expected and report["format"] == "argilla"
    assert run_command(main, ["--ratings", str(export), "--output", str(out), "--question", "quality",
                              "--prompt_field", "question", "--pairs", "all"]) == 0
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["import"]["question"] == "quality"


# --- Label Studio ---


def test_labelstudio_json_gives_the_csv_pairs(tmp_path):
    _images(tmp_path)
    expected, _, _ = _pairs(_csv(tmp_path))
    export = tmp_path / "project-1-at-2025.json"
    export.write_text(json.dumps(_labelstudio_tasks()), encoding="utf-8")
    rows, report, _ = _pairs(export)
    assert rows == expected
    assert report["import"] == {"format": "labelstudio", "question": "quality", "records": 5, "ratings": 15,
                                "skipped": {"cancelled annotation": 5, "annotation without a 'quality' rating": 5}}
    assert {r["rater"] for r in report["raters"]} == {"Ana", "Ben", "3"}  # email when expanded, else the id
    forced, _, _ = _pairs(export, input_format="labelstudio")
    assert forced == expected


def test_labelstudio_rows_are_located_by_task_and_annotation(tmp_path):
    _images(tmp_path)
    tasks = _labelstudio_tasks()
    tasks[1]["annotations"][2]["result"][0]["value"]["rating"] = "five"
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")
    _, report, _ = _pairs(export, min_raters=1)
    assert report["dropped"]["bad score"] == 1
    assert report["dropped_examples"]["bad score"] == ["task 2 (id 8), annotation 3: score 'five'"]
    with pytest.raises(RatingsError, match=r"export\.json task 2 \(id 8\), annotation 3: bad score"):
        build_pairs(export, strict=True)


# --- broken exports: one error line naming the record ---


def _refused(tmp_path, capsys, export, *extra) -> str:
    out = tmp_path / "out"
    assert run_command(main, ["--ratings", str(export), "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    return err[0]


def test_broken_exports_name_the_record(tmp_path, capsys):
    _images(tmp_path)
    records = _argilla_records()
    records[1]["quality.responses.users"] = ["Ana", "Ben"]
    (tmp_path / "argilla.json").write_text(json.dumps(records), encoding="utf-8")
    message = _refused(tmp_path, capsys, tmp_path / "argilla.json")
    assert "argilla.json record 2 (id 'r1'): 'quality.responses' has 4 value(s) but 'quality.responses.users' has 2" \
        in message
    tasks = _labelstudio_tasks()
    tasks[1]["annotations"] = {"oops": 1}
    (tmp_path / "ls.json").write_text(json.dumps(tasks), encoding="utf-8")
    assert "ls.json task 2 (id 8): 'annotations' is not a list" in _refused(tmp_path, capsys, tmp_path / "ls.json")
    (tmp_path / "other.json").write_text(json.dumps([{"a": 1}]), encoding="utf-8")
    assert "neither a Label Studio nor an Argilla export" in _refused(tmp_path, capsys, tmp_path / "other.json")
    (tmp_path / "none.json").write_text(json.dumps(_labelstudio_tasks()), encoding="utf-8")
    message = _refused(tmp_path, capsys, tmp_path / "none.json", "--question", "stars")
    assert "no Rating control 'stars' in the export (found: quality)" in message
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    assert "bad.json: not valid JSON" in _refused(tmp_path, capsys, tmp_path / "bad.json")
