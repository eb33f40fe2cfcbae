"""ChartQA relaxed accuracy as an `evaluate` metric — exactly pix2struct's `relaxed_correctness`.

    import evaluate
    from vlm_tune.metrics import RELAXED_ACCURACY
    metric = evaluate.load(RELAXED_ACCURACY)          # a local path: works offline
    metric.compute(predictions=["41"], references=[["40"]])   # {'relaxed_accuracy': 1.0}

A prediction is correct when both it and a target parse as floats (a trailing '%' divides by 100)
and the target is non-zero and |pred - target| / |target| <= 0.05; otherwise when the two strings
are equal ignoring case. A row scores its best label. `normalize=True` (off by default, so numbers
compare with published ones) also strips whitespace, a trailing '.', thousands commas and a
leading '$' before comparing.
"""

import datasets
import evaluate

_CITATION = """\
@inproceedings{masry-etal-2022-chartqa,
  title = {ChartQA: A Benchmark for Question Answering about Charts with Visual and Logical Reasoning},
  author = {Masry, Ahmed and Long, Do Xuan and Tan, Jia Qing and Joty, Shafiq and Hoque, Enamul},
  booktitle = {Findings of ACL 2022},
  year = {2022}
}
"""

_DESCRIPTION = "ChartQA relaxed accuracy (pix2struct's relaxed_correctness): 5 % numeric tolerance, else exact match."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted answers (str).
    references: list of lists of accepted answers (ChartQA's `label`); a row scores its best label.
    max_relative_change: numeric tolerance relative to the target (default 0.05).
    normalize: also strip whitespace, trailing '.', thousands commas and a leading '$' (default False).
Returns:
    relaxed_accuracy: mean correctness in [0, 1].
"""


def _to_float(text):
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0  # as pix2struct: '40%' == 0.4
        return float(text)
    except ValueError:
        return None


def _normalize(text):
    text = text.strip().rstrip(".").strip()
    if text.startswith("$"):
        text = text[1:]
    stripped = text.replace(",", "")
    return stripped if _to_float(stripped) is not None else text


def relaxed_correctness(target, prediction, max_relative_change=0.05, normalize=False):
    """pix2struct's definition, line for line; `normalize` is our opt-in extra."""
    if normalize:
        target, prediction = _normalize(target), _normalize(prediction)
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        relative_change = abs(prediction_float - target_float) / abs(target_float)
        return relative_change <= max_relative_change
    return prediction.lower() == target.lower()


def best_correctness(targets, prediction, max_relative_change=0.05, normalize=False):
    if isinstance(targets, str):
        targets = [targets]
    return max(
        (float(relaxed_correctness(t, prediction, max_relative_change, normalize)) for t in targets), default=0.0
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RelaxedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/google-research/pix2struct"],
        )

    def _compute(self, predictions, references, max_relative_change=0.05, normalize=False):
        scores = [best_correctness(r, p, max_relative_change, normalize) for p, r in zip(predictions, references)]
        return {"relaxed_accuracy": sum(scores) / len(scores) if scores else 0.0}
