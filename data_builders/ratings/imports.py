"""Annotation-tool exports -> the builder's rows (image, prompt, response, rater, score).

- Argilla v2: records as written by `dataset.records.to_datasets()` / `to_list(flatten=True)` (JSON,
  JSONL or Parquet; per record the fields as keys plus `<question>.responses`,
  `<question>.responses.users` and `<question>.responses.status`), or the nested records of
  `dataset.records.to_json()` (`fields`, `responses: {question: [{value, user_id}]}`).
- Label Studio: the JSON export, a list of tasks: `data` (the task's fields) and `annotations[]`
  with `completed_by` and `result[]` entries `{from_name, to_name, type, value}`; a rating is
  `type: "rating"` with `value.rating`.

One row per (record, rater) rating. What is not a team rating (drafts, discarded responses,
cancelled annotations, annotations without a rating, model predictions) is skipped and counted in
the import summary; a record that breaks the schema is one RatingsError naming it.
docs/formats.md documents the mapping.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from data_builders.ratings.schema import RatingsError

ARGILLA_KEPT_STATUS = (None, "submitted")  # a response without a status (older exports) counts
LABEL_STUDIO_LOCAL_FILES = "/data/local-files/?d="  # Label Studio's local-storage URL prefix


@dataclass
class ImportFields:
    """Which export fields hold the image, prompt and response, and which question holds the rating."""

    image: str = "image"
    prompt: str = "prompt"
    response: str = "response"
    question: str | None = None  # Argilla question / Label Studio Rating `name`; None: the only one there is


@dataclass
class Imported:
    """An export as the builder's rows, with where each row came from and what was skipped."""

    frame: pd.DataFrame  # columns image, prompt, [response], rater, score: one row per rating
    labels: np.ndarray  # per row: where it is in the export ("record 3 (id 'a1')")
    summary: dict = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)  # embedded image name -> its bytes


# --- detection ---


def is_argilla(keys) -> bool:
    keys = set(keys)
    return any(str(k).endswith(".responses") for k in keys) or {"fields", "responses"} <= keys


def is_labelstudio(keys) -> bool:
    return "data" in set(keys) and bool({"annotations", "predictions"} & set(keys))


def _as_list(value):
    """A list cell (JSON list, or the numpy array Parquet gives); None stays None."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _pick_question(path: Path, found: dict[str, bool], wanted: str | None, what: str) -> str:
    """The rating question: `wanted`, else the only one with numeric answers (found: name -> has them)."""
    if wanted is not None:
        if wanted not in found:
            shown = ", ".join(sorted(found)) or "none"
            raise RatingsError(f"{path}: no {what} {wanted!r} in the export (found: {shown})")
        return wanted
    numeric = sorted(name for name, ok in found.items() if ok)
    if len(numeric) == 1:
        return numeric[0]
    if not numeric:
        shown = ", ".join(sorted(found)) or "none"
        raise RatingsError(f"{path}: no {what} with numeric answers (found: {shown}); pass --question")
    raise RatingsError(f"{path}: several {what}s with numeric answers ({', '.join(numeric)}); pass --question")


def _require_fields(path: Path, seen: set, fields: ImportFields) -> bool:
    """RatingsError if no record has the image or prompt field; whether any has the response field."""
    for name, flag in ((fields.image, "--image_field"), (fields.prompt, "--prompt_field")):
        if name not in seen:
            shown = ", ".join(sorted(map(str, seen))) or "none"
            raise RatingsError(f"{path}: no record has a field {name!r} (fields: {shown}); pass {flag}")
    return fields.response in seen


def _image_cell(value, images: dict[str, bytes]) -> str:
    """The image column's text for an export's image value: a path as written (Label Studio's
    local-storage URL /data/local-files/?d=dir/a.png becomes dir/a.png), or, for an image embedded in
    the export (a data URI, or the {bytes, path} of a datasets Image), a name under which its bytes
    are kept in `images`."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None:
            return _image_cell(path, images)
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return ""
        return _embedded(bytes(data), images)
    text = _text(value)
    if text.startswith("data:image/") and ";base64," in text[:64]:
        try:
            return _embedded(base64.b64decode(text.split(",", 1)[1], validate=True), images)
        except (binascii.Error, ValueError):
            return text[:40] + "..."  # kept as a (missing) path: the row is dropped as missing image
    if text.startswith(LABEL_STUDIO_LOCAL_FILES):
        return unquote(text[len(LABEL_STUDIO_LOCAL_FILES):])
    return text


def _embedded(data: bytes, images: dict[str, bytes]) -> str:
    name = f"embedded-{hashlib.sha1(data).hexdigest()[:16]}"
    images[name] = data
    return name


def _frame(rows: dict, with_response: bool) -> pd.DataFrame:
    columns = ["image", "prompt", "response", "rater", "score"] if with_response else ["image", "prompt", "rater", "score"]
    return pd.DataFrame({name: pd.Series(rows[name], dtype=object) for name in columns})


# --- Argilla ---


def _flatten_argilla(record: dict) -> dict:
    """A nested `to_json` record in the flattened `to_datasets` shape (fields as keys, <q>.responses...)."""
    if not (isinstance(record.get("fields"), dict) and isinstance(record.get("responses"), dict)):
        return record
    flat = {"id": record.get("id"), "_server_id": record.get("_server_id"), **record["fields"]}
    for question, answers in record["responses"].items():
        answers = [a for a in answers or [] if isinstance(a, dict)]
        flat[f"{question}.responses"] = [a.get("value") for a in answers]
        flat[f"{question}.responses.users"] = [a.get("user_id") for a in answers]
        flat[f"{question}.responses.status"] = [a.get("status") for a in answers]
    return flat


def _argilla_label(index: int, record: dict) -> str:
    record_id = record.get("id") or record.get("_server_id")
    return f"record {index + 1}" + (f" (id {str(record_id)!r})" if record_id not in (None, "") else "")


def _argilla_questions(records: list) -> dict[str, bool]:
    """question -> whether any answer to it is a number (Rating questions; text, label and ranking
    answers are not numbers)."""
    found: dict[str, bool] = {}
    for record in records:
        for key, value in record.items():
            if str(key).endswith(".responses"):
                question = key[: -len(".responses")]
                numeric = any(_is_number(v) for v in (_as_list(value) or []))
                found[question] = found.get(question, False) or numeric
    return found


def _argilla_answers(path: Path, label: str, record: dict, question: str) -> list[tuple]:
    """(value, user, status) of one record's answers to the question; RatingsError if the lists disagree."""
    key = f"{question}.responses"
    values, users = _as_list(record.get(key)), _as_list(record.get(f"{key}.users"))
    status = _as_list(record.get(f"{key}.status"))
    for name, value in ((key, values), (f"{key}.users", users), (f"{key}.status", status)):
        if value is not None and not isinstance(value, list):
            raise RatingsError(f"{path} {label}: {name!r} is not a list")
    values, users = values or [], users or []
    if len(values) != len(users) or (status is not None and len(status) != len(values)):
        raise RatingsError(f"{path} {label}: {key!r} has {len(values)} value(s) but {key + '.users'!r} has "
                           f"{len(users)}" + ("" if status is None else f" and {key + '.status'!r} {len(status)}"))
    return list(zip(values, users, status if status is not None else [None] * len(values)))


def argilla_rows(path: Path, records: list, fields: ImportFields) -> Imported:
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RatingsError(f"{path} record {index + 1}: not a JSON object")
    records = [_flatten_argilla(r) for r in records]
    question = _pick_question(path, _argilla_questions(records), fields.question, "rating question")
    with_response = _require_fields(path, {k for r in records for k in r}, fields)
    rows = {name: [] for name in ("image", "prompt", "response", "rater", "score")}
    labels, skipped, images = [], Counter(), {}
    for index, record in enumerate(records):
        label = _argilla_label(index, record)
        image = _image_cell(record.get(fields.image), images)
        answers = _argilla_answers(path, label, record, question)
        if not answers:
            skipped[f"record without a {question!r} response"] += 1
        for value, user, status in answers:
            if status not in ARGILLA_KEPT_STATUS:
                skipped[f"{status} response (only submitted ones count)"] += 1
                continue
            rows["image"].append(image)
            rows["prompt"].append(_text(record.get(fields.prompt)))
            rows["response"].append(_text(record.get(fields.response)))
            rows["rater"].append(_text(user))
            rows["score"].append(value)
            labels.append(f"{label}, user {_text(user)!r}")
    summary = {"format": "argilla", "question": question, "records": len(records), "ratings": len(labels),
               "skipped": dict(skipped)}
    return _imported(path, rows, with_response, labels, summary, images)


# --- Label Studio ---


def _user(completed_by) -> str:
    """A Label Studio annotator: the id, or email / username when the export expands the user."""
    if isinstance(completed_by, dict):
        for key in ("email", "username", "id"):
            if completed_by.get(key) not in (None, ""):
                return str(completed_by[key])
        return ""
    return _text(completed_by)


def _task_label(index: int, task: dict) -> str:
    return f"task {index + 1}" + (f" (id {task['id']})" if task.get("id") is not None else "")


def _check_task(path: Path, index: int, task) -> list:
    """The task's annotations; RatingsError naming the task when it breaks the export schema."""
    if not isinstance(task, dict):
        raise RatingsError(f"{path} task {index + 1}: not a JSON object")
    label = _task_label(index, task)
    if not isinstance(task.get("data"), dict):
        raise RatingsError(f"{path} {label}: 'data' is missing or not an object")
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list):
        raise RatingsError(f"{path} {label}: 'annotations' is not a list")
    for number, annotation in enumerate(annotations, 1):
        results = annotation.get("result") if isinstance(annotation, dict) else None
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise RatingsError(f"{path} {label}, annotation {number}: not an object with a 'result' list of objects")
        for result in results:
            if result.get("type") == "rating" and not isinstance(result.get("value"), dict):
                raise RatingsError(f"{path} {label}, annotation {number}: rating {result.get('from_name')!r} "
                                   "has no 'value' object")
    return annotations


def _labelstudio_controls(annotations: list) -> dict[str, bool]:
    """Rating control names (from_name of results of type "rating": numeric by construction) -> True."""
    return {str(result.get("from_name")): True for per_task in annotations for annotation in per_task
            for result in annotation["result"] if result.get("type") == "rating"}


def labelstudio_rows(path: Path, tasks: list, fields: ImportFields) -> Imported:
    annotations = [_check_task(path, index, task) for index, task in enumerate(tasks)]
    control = _pick_question(path, _labelstudio_controls(annotations), fields.question, "Rating control")
    with_response = _require_fields(path, {k for t in tasks for k in t["data"]}, fields)
    rows = {name: [] for name in ("image", "prompt", "response", "rater", "score")}
    labels, skipped, images = [], Counter(), {}
    for index, (task, per_task) in enumerate(zip(tasks, annotations)):
        data = task["data"]
        image = _image_cell(data.get(fields.image), images)
        if not per_task:
            skipped["task without annotations"] += 1
        for number, annotation in enumerate(per_task, 1):
            ratings = [r for r in annotation["result"] if r.get("type") == "rating" and r.get("from_name") == control]
            if annotation.get("was_cancelled"):
                skipped["cancelled annotation"] += 1
                continue
            if not ratings:
                skipped[f"annotation without a {control!r} rating"] += 1
            for result in ratings:
                rows["image"].append(image)
                rows["prompt"].append(_text(data.get(fields.prompt)))
                rows["response"].append(_text(data.get(fields.response)))
                rows["rater"].append(_user(annotation.get("completed_by")))
                rows["score"].append(result["value"].get("rating"))
                labels.append(f"{_task_label(index, task)}, annotation {number}")
    summary = {"format": "labelstudio", "question": control, "records": len(tasks), "ratings": len(labels),
               "skipped": dict(skipped)}
    return _imported(path, rows, with_response, labels, summary, images)


# --- entry point ---


def _imported(path: Path, rows: dict, with_response: bool, labels: list, summary: dict, images: dict) -> Imported:
    if not labels:
        skipped = ", ".join(f"{n} {why}" for why, n in summary["skipped"].items()) or "nothing to skip"
        raise RatingsError(f"{path}: no ratings in the {summary['format']} export ({summary['records']} "
                           f"record(s); {skipped})")
    return Imported(_frame(rows, with_response), np.array(labels, dtype=object), summary, images)


def export_rows(path: Path, fmt: str, records: list, fields: ImportFields) -> Imported:
    """The records (tasks) of an Argilla or Label Studio export as the builder's rows (see the module docstring)."""
    if fmt == "argilla":
        return argilla_rows(path, records, fields)
    return labelstudio_rows(path, records, fields)
