"""Tests for ``mmkd predict``: one image + caption prints one JSON line, a file of items gives one answer per item,
and a user's mistake (missing image, no caption) ends with a message instead of a traceback."""

from __future__ import annotations

import json
import math
import os
import shutil

import polars as pl
import pytest

from mmkd.cli import main
from mmkd.deploy.predict import read_item_file
from mmkd.modeling import ADAPTER_INFO
from mmkd.schema import ANSWER_SCHEMA, ITEM_SCHEMA, read_items

ARCH = "llava"  # the demo student's architecture


@pytest.fixture(scope="module")
def adapter(stage1_run) -> str:
    return str(stage1_run(ARCH).adapter)


@pytest.fixture(scope="module")
def items(world_dir) -> pl.DataFrame:
    return read_items(world_dir / "test.parquet").head(3)


def test_single_item_prints_one_json_line(adapter, items, capsys):
    code = main(["predict", "--image", items["image_path"][0], "--caption", items["caption"][0], "--adapter", adapter])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    answer = json.loads(lines[0])
    assert {"label", "score", "raw_score", "rationale"} <= set(answer)
    assert answer["score"] is None or 0.0 <= answer["score"] <= 1.0
    assert answer["score"] == answer["raw_score"]  # this adapter recorded no calibration
    # A random student rarely follows the answer format; then the raw text is shown and nothing is guessed.
    if answer["label"] is None:
        assert answer["status"] == "unparsed" and "raw_text" in answer


def test_items_file_gives_one_answer_per_item(adapter, items, world_dir, tmp_path, capsys):
    items_file = tmp_path / "items.jsonl"
    # Image paths relative to the items file, as a user would write them.
    rows = [
        {"id": r["id"], "image_path": os.path.relpath(r["image_path"], tmp_path), "caption": r["caption"]}
        for r in items.iter_rows(named=True)
    ]
    items_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.parquet"

    assert main(["predict", "--items", str(items_file), "--out", str(out), "--adapter", adapter]) == 0

    answers = pl.read_parquet(out)
    assert answers.schema == pl.Schema(ANSWER_SCHEMA | {"raw_score": pl.Float64()})
    assert answers["id"].to_list() == items["id"].to_list()
    assert set(answers["status"]) <= {"ok", "unparsed"}  # every image was found through its relative path
    assert answers["source"].to_list() == ["student"] * len(items)
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == len(items) and summary["out"] == str(out)


def test_jsonl_items_with_and_without_evidence(tmp_path):
    rows = [
        {"id": 1, "image_path": "a.png", "caption": "A red circle."},  # numeric id, no evidence fields
        {"id": "b", "image_path": "/abs/b.png", "caption": "A blue cross.", "evidence_entities": ["blue", "cross"]},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_item_file(path)
    assert items.schema == pl.Schema(ITEM_SCHEMA)
    assert items["id"].to_list() == ["1", "b"]
    assert items["image_path"].to_list() == [str(tmp_path.resolve() / "a.png"), "/abs/b.png"]
    assert items["evidence_entities"].to_list() == [None, ["blue", "cross"]]
    assert items["evidence_captions"].to_list() == [None, None]


def test_missing_image_names_the_file(adapter, tmp_path):
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--image", str(missing), "--caption", "A red circle in the city.", "--adapter", adapter])
    assert "mmkd predict:" in str(exc.value.code)
    assert str(missing) in str(exc.value.code) and "does not exist" in str(exc.value.code)


def test_blank_caption_is_refused(adapter, items):
    with pytest.raises(SystemExit, match="caption is empty"):
        main(["predict", "--image", items["image_path"][0], "--caption", " ", "--adapter", adapter])


@pytest.mark.parametrize(
    "args",
    [
        ["--image", "x.png", "--caption", "c", "--items", "items.jsonl"],  # both modes
        [],  # neither mode
    ],
)
def test_exactly_one_mode_is_required(adapter, args):
    with pytest.raises(SystemExit, match="give either --image and --caption, or --items FILE --out FILE"):
        main(["predict", *args, "--adapter", adapter])


@pytest.mark.parametrize(
    ("recorded", "flag", "expected"), [(None, [], "v1"), ("v2", [], "v2"), ("v2", ["--prompt-version", "v1"], "v1")]
)
def test_the_prompt_version_follows_the_adapter_unless_given(adapter, items, tmp_path, recorded, flag, expected):
    """An adapter records the prompt it was trained with; predict asks the same way unless told otherwise."""
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    info_file = copy / ADAPTER_INFO
    info = json.loads(info_file.read_text())
    info.pop("prompt_version", None)
    if recorded:
        info["prompt_version"] = recorded
    info_file.write_text(json.dumps(info))
    items_file = tmp_path / "items.parquet"
    items.write_parquet(items_file)
    out = tmp_path / "answers.parquet"
    assert main(["predict", "--items", str(items_file), "--out", str(out), "--adapter", str(copy), *flag]) == 0
    assert pl.read_parquet(out)["prompt_version"].to_list() == [expected] * len(items)


def test_the_threshold_is_the_flag_else_the_adapters_val_threshold(adapter, items, world_dir, tmp_path, capsys):
    """Batch output reports the threshold it labelled with: --threshold, else the one recorded in the adapter by
    its training stage, else none (the label as written, i.e. score >= 0.5); a threshold outside [0, 1] is refused."""
    from mmkd.evaluation.thresholds import record_threshold

    calibrated = tmp_path / "adapter"
    shutil.copytree(adapter, calibrated)
    out, items_file = tmp_path / "answers.parquet", tmp_path / "items.parquet"
    items.write_parquet(items_file)  # absolute image paths
    args = ["predict", "--items", str(items_file), "--out", str(out)]
    assert main([*args, "--adapter", adapter]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] is None
    record_threshold(calibrated, {"value": 0.7, "rule": "max_accuracy"})
    assert main([*args, "--adapter", str(calibrated)]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == 0.7
    assert main([*args, "--adapter", str(calibrated), "--threshold", "0.2"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == 0.2
    with pytest.raises(SystemExit, match="--threshold 1.5"):
        main([*args, "--adapter", adapter, "--threshold", "1.5"])


# A recorded Platt fit (mmkd.evaluation.calibration): calibrated = sigmoid(0.5 * logit(raw) - 1). The val threshold
# 0.7 on the raw score is sigmoid(0.5 * 0.847298 - 1) = sigmoid(-0.576351) = 0.359777 on the calibrated scale.
FIT = {"method": "platt", "a": 0.5, "b": -1.0}


def platt(raw: float) -> float:
    return 1 / (1 + math.exp(-(0.5 * math.log(raw / (1 - raw)) - 1.0)))


def test_predict_reports_the_calibrated_score_and_keeps_the_raw_one(adapter, items, tmp_path, capsys):
    from mmkd.evaluation.thresholds import record_threshold

    calibrated = tmp_path / "adapter"
    shutil.copytree(adapter, calibrated)
    record_threshold(calibrated, {"value": 0.7, "rule": "max_accuracy", "score_calibration": FIT})
    items_file = tmp_path / "items.parquet"
    items.write_parquet(items_file)
    runs = {}
    for name, flag in (("calibrated", []), ("raw", ["--raw-score"])):
        out = tmp_path / f"{name}.parquet"
        assert (
            main(["predict", "--items", str(items_file), "--out", str(out), "--adapter", str(calibrated), *flag]) == 0
        )
        runs[name] = (pl.read_parquet(out), json.loads(capsys.readouterr().out))
    (answers, summary), (raw, raw_summary) = runs["calibrated"], runs["raw"]
    assert summary["score"] == "calibrated" and summary["threshold"] == pytest.approx(platt(0.7))
    assert raw_summary["score"] == "raw" and raw_summary["threshold"] == 0.7
    assert answers["raw_score"].to_list() == raw["score"].to_list() == raw["raw_score"].to_list()
    for score, raw_score in zip(answers["score"], answers["raw_score"], strict=True):
        assert score == (None if raw_score is None else pytest.approx(platt(raw_score)))
    assert answers["label"].to_list() == raw["label"].to_list()  # the mapped threshold flags the same items


def test_predict_items_calibrates_a_model_that_answers_in_format(answering_models, items):
    """The score of every parsed answer is calibrated, the raw one kept, and the labels at a raw threshold and at
    its calibrated image agree."""
    from mmkd.deploy.predict import load_predictor, predict_items
    from mmkd.evaluation.calibration import calibrated_threshold

    predictor = load_predictor(adapter=None, base=str(answering_models(ARCH)), batch_size=4)
    raw = predict_items(predictor, items, "v1", threshold=0.5)
    answers = predict_items(predictor, items, "v1", threshold=calibrated_threshold(0.5, FIT), calibration=FIT)
    scored = answers.filter(pl.col("raw_score").is_not_null())
    assert len(scored) > 0, "the answering model should write parsable answers"
    assert scored["score"].to_list() == pytest.approx([platt(r) for r in scored["raw_score"]])
    assert answers["raw_score"].to_list() == raw["score"].to_list()
    assert answers["label"].to_list() == raw["label"].to_list()
