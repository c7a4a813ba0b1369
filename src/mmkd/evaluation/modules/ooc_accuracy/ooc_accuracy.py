"""Out-of-context detection accuracy, as an ``evaluate`` metric module shipped with mmkd (no Hub needed).

Predictions are label strings; anything that is not a known label (``unparsed``, ``error``, ``skipped``) counts
as wrong for accuracy and as a miss (never a false positive) for macro-F1.
"""

import datasets
import evaluate

LABELS = ("pristine", "falsified")  # mirrors mmkd.schema.LABELS; loaded standalone by `evaluate`, so no import

_DESCRIPTION = "Accuracy overall, on falsified items and on pristine items, macro-F1 and unparsed rate."
_KWARGS = "predictions (list of str), references (list of str, each 'pristine' or 'falsified')"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class OocAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        bad = sorted({r for r in references if r not in LABELS})
        if bad:
            raise ValueError(f"references must be one of {LABELS}, got {bad}")
        n = len(references)
        pairs = list(zip(predictions, references, strict=True))

        def acc(label=None):
            sel = [(p, r) for p, r in pairs if label is None or r == label]
            return sum(p == r for p, r in sel) / len(sel) if sel else None

        f1s = []
        for label in LABELS:
            tp = sum(p == label and r == label for p, r in pairs)
            fp = sum(p == label and r != label for p, r in pairs)
            fn = sum(p != label and r == label for p, r in pairs)
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return {
            "accuracy": acc(),
            "accuracy_falsified": acc("falsified"),
            "accuracy_pristine": acc("pristine"),
            "macro_f1": sum(f1s) / len(f1s),
            "unparsed_rate": sum(p not in LABELS for p in predictions) / n if n else None,
            "n": n,
        }
