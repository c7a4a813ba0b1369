"""The annotation loop's library: resolving people's judgements into gold, the queue's order and budget, and the
export -> Label Studio export -> import round trip, on small hand-made tables whose right answers are worked out
in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from mmkd.annotation.exchange import apply_import, check_import, export_queue, read_judgements
from mmkd.annotation.label_studio import DEFAULT_CHOICES, label_config
from mmkd.annotation.labels import (
    LabelFileError,
    append_label_rows,
    cohen_kappa,
    merged_gold,
    read_label_rows,
    resolve,
)
from mmkd.annotation.queue import build_queue, evaluation_sample, score_gap

FALSIFIED_CHOICE, PRISTINE_CHOICE = "Falsified (out of context)", "Pristine (caption matches the image)"


def judgement(item, label, who, time="2026-12-01T10:00:00"):
    return {"id": item, "label": label, "annotator": who, "time": time}


def test_each_annotators_latest_judgement_counts_once_and_a_tie_is_left_for_adjudication():
    rows = [
        judgement("a", "falsified", "ann", "2026-12-01T10:00:00"),
        judgement("a", "pristine", "ann", "2026-12-02T10:00:00"),  # ann changed her mind: pristine counts
        judgement("a", "pristine", "bob"),
        judgement("b", "falsified", "ann"),
        judgement("b", "pristine", "bob"),  # 1 vs 1: disputed
        judgement("c", "falsified", "ann"),
        judgement("c", "falsified", "bob"),
        judgement("c", "pristine", "cy"),  # 2 vs 1: falsified
    ]
    resolution = resolve(rows)
    assert resolution.gold.to_dicts() == [
        {"id": "a", "gold_label": "pristine"},
        {"id": "c", "gold_label": "falsified"},
    ]
    assert resolution.disputed == ["b"]
    # ann|bob share a, b, c: (p,p) (f,p) (f,f): observed 2/3; ann says p once in 3, bob p twice in 3:
    # expected = 1/3*2/3 + 2/3*1/3 = 4/9; kappa = (2/3 - 4/9) / (1 - 4/9) = 2/5
    assert resolution.agreement["cohen_kappa"]["ann|bob"] == pytest.approx(0.4)
    assert resolution.agreement["items_with_several_annotators"] == 3
    assert resolution.agreement["all_agree"] == 1


def test_cohen_kappa_by_hand():
    assert cohen_kappa(["pristine", "falsified"], ["pristine", "falsified"]) == pytest.approx(1.0)
    # observed 0; expected 1/2*1/2 + 1/2*1/2 = 1/2: kappa = (0 - .5) / .5 = -1
    assert cohen_kappa(["pristine", "falsified"], ["falsified", "pristine"]) == pytest.approx(-1.0)
    assert cohen_kappa(["pristine"], ["pristine"]) is None  # chance agreement is total: undefined
    assert cohen_kappa([], []) is None


def test_dataset_gold_and_human_labels_merge_by_the_documented_precedence():
    dataset = pl.DataFrame(
        [
            {"id": "a", "gold_label": "falsified", "gold_class": "x"},
            {"id": "b", "gold_label": "pristine", "gold_class": "y"},
        ]
    )
    human = pl.DataFrame([{"id": "b", "gold_label": "falsified"}, {"id": "c", "gold_label": "pristine"}])
    assert merged_gold(dataset, human, "dataset").to_dicts() == [
        {"id": "a", "gold_label": "falsified", "gold_class": "x", "origin": "dataset"},
        {"id": "b", "gold_label": "pristine", "gold_class": "y", "origin": "dataset"},
        {
            "id": "c",
            "gold_label": "pristine",
            "gold_class": None,
            "origin": "human",
        },  # a finer class stays the dataset's
    ]
    by_people = merged_gold(dataset, human, "human")
    assert by_people["gold_label"].to_list() == ["falsified", "falsified", "pristine"]
    assert by_people["origin"].to_list() == ["dataset", "human", "human"]
    assert merged_gold(None, human).columns == ["id", "gold_label", "origin"]
    with pytest.raises(ValueError, match="annotation.prefer"):
        merged_gold(dataset, human, "loudest")


def answers(scores: dict[str, float | None], statuses: dict[str, str] | None = None) -> pl.DataFrame:
    statuses = statuses or {}
    return pl.DataFrame(
        [{"id": i, "score": s, "status": statuses.get(i, "ok")} for i, s in scores.items()],
        schema={"id": pl.String, "score": pl.Float64, "status": pl.String},
    )


def test_score_gap_is_the_largest_pairwise_difference():
    assert score_gap([0.9, 0.2]) == pytest.approx(0.7)
    assert score_gap([0.9, 0.2, 0.1]) == pytest.approx(0.8)
    assert score_gap([0.9, None]) is None
    assert score_gap([0.9]) is None


def test_the_queue_puts_the_strongest_disagreement_first_then_the_evaluation_sample_and_keeps_the_budget():
    train = {
        "t1": answers({"x": 0.9, "y": 0.6, "z": 0.99, "w": 0.8}, {"w": "unparsed"}),
        "t2": answers({"x": 0.1, "y": 0.4, "z": 0.0, "w": 0.1}),
    }
    # gaps: x 0.8, y 0.2, z 0.99, w unknown (t1 did not parse): z, x, y, then w
    queue = build_queue(["x", "y", "z", "w"], train, set(), set(), {"test": ["q1", "q2", "q3"]}, {"test": 2})
    assert [(q.id, q.purpose) for q in queue[:4]] == [
        ("z", "selection"),
        ("x", "selection"),
        ("y", "selection"),
        ("w", "selection"),
    ]
    assert [q.priority for q in queue[:3]] == pytest.approx([0.99, 0.8, 0.2])
    tail = queue[4:]
    assert [q.purpose for q in tail] == ["evaluation", "evaluation"]
    assert [q.id for q in tail] == evaluation_sample(["q1", "q2", "q3"], 2, seed=0, split="test")
    assert [q.id for q in build_queue(["x", "y", "z", "w"], train, set(), set(), {}, {}, budget=2)] == ["z", "x"]
    with pytest.raises(ValueError, match="budget"):
        build_queue([], train, set(), set(), {}, {}, budget=-1)


def test_a_re_export_after_partial_labelling_queues_only_what_is_unlabelled_and_the_same_evaluation_sample():
    train = {"t1": answers({"x": 0.9, "y": 0.6}), "t2": answers({"x": 0.1, "y": 0.4})}
    pool = {"val": [f"v{i}" for i in range(10)]}
    first = build_queue(["x", "y"], train, set(), set(), pool, {"val": 3})
    sampled = [q.id for q in first if q.split == "val"]
    labelled = {"x", sampled[0]}
    again = build_queue(["x", "y"], train, labelled, {"y"}, pool, {"val": 3})
    assert [(q.id, q.purpose) for q in again] == [("y", "adjudication")] + [(i, "evaluation") for i in sampled[1:]]


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """Three train items the teachers disagree on and two test items, with images and both teachers' answers."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    items = {}
    for split, ids in {"train": ["t0", "t1", "t2"], "test": ["s0", "s1"]}.items():
        for i in ids:
            Image.new("RGB", (8, 8), (40 * len(i), 0, 0)).save(images / f"{i}.png")
        items[split] = pl.DataFrame(
            [
                {
                    "id": i,
                    "image_path": f"images/{i}.png",
                    "caption": f"caption of {i}",
                    "evidence_entities": ["a red circle"],
                    "evidence_captions": None,
                }
                for i in ids
            ],
            schema={
                "id": pl.String,
                "image_path": pl.String,
                "caption": pl.String,
                "evidence_entities": pl.List(pl.String),
                "evidence_captions": pl.List(pl.String),
            },
        )

    def teacher(label, score, ids):
        return pl.DataFrame(
            [
                {
                    "id": i,
                    "label": label,
                    "rationale": f"because {label} {i}",
                    "raw_text": "",
                    "status": "ok",
                    "score": score,
                }
                for i in ids
            ]
        )

    answer_tables = {
        split: {"teacher_a": teacher("falsified", 0.9, ids), "teacher_b": teacher("pristine", 0.2, ids)}
        for split, ids in {"train": ["t0", "t1", "t2"], "test": ["s0", "s1"]}.items()
    }
    labels = {s: tmp_path / "annotation" / "labels" / f"{s}.jsonl" for s in ("train", "val", "test")}
    return {"root": tmp_path, "items": items, "answers": answer_tables, "labels": labels}


def exported(world, show_teachers=True, **queue_args):
    queue = build_queue(
        ["t0", "t1", "t2"], world["answers"]["train"], set(), set(), {"test": ["s0", "s1"]}, {"test": 1}, **queue_args
    )
    out = world["root"] / "annotation" / "queue"
    dirs = {s: world["root"] / "data" for s in world["items"]}
    counts = export_queue(queue, world["items"], dirs, world["answers"], out, show_teachers=show_teachers)
    return out, counts


def test_export_writes_label_studio_tasks_with_image_caption_evidence_and_each_teachers_answer(world):
    out, counts = exported(world)
    assert counts == {"selection": 3, "evaluation": 1}
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["mmkd_id"] for t in tasks][:3] == ["t0", "t1", "t2"]
    first = tasks[0]["data"]
    assert first["image"].startswith("data:image/png;base64,")
    assert first["caption"] == "caption of t0" and "a red circle" in first["evidence"]
    assert first["teacher_teacher_a"] == "falsified (P(falsified) = 0.90): because falsified t0"
    assert first["teacher_teacher_b"] == "pristine (P(falsified) = 0.20): because pristine t0"
    config = (out / "label_config.xml").read_text()
    assert '<Text name="teacher_teacher_a" value="$teacher_teacher_a"/>' in config
    assert all(f'<Choice value="{c}"/>' in config for c in DEFAULT_CHOICES)
    rows = [json.loads(line) for line in (out / "queue.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and rows[3]["split"] == "test"
    assert pl.read_csv(out / "queue.csv")["id"].to_list() == [r["id"] for r in rows]


def test_hidden_teachers_are_not_in_the_tasks_or_the_interface(world):
    out, _ = exported(world, show_teachers=False)
    assert not any(k.startswith("teacher_") for k in json.loads((out / "tasks.json").read_text())[0]["data"])
    assert "teacher_" not in (out / "label_config.xml").read_text()
    assert "teacher" not in label_config(["teacher_a"], show_teachers=False)


def ls_export(answers_by_item: dict[str, list[tuple[str, int, bool]]]) -> list[dict]:
    """A Label Studio JSON export: per item, (choice, user id, was_cancelled) answers."""
    return [
        {
            "id": n,
            "data": {"mmkd_id": item},
            "annotations": [
                {
                    "completed_by": user,
                    "was_cancelled": cancelled,
                    "updated_at": f"2026-12-07T0{k}:00:00Z",
                    "result": []
                    if cancelled
                    else [
                        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
                    ],
                }
                for k, (choice, user, cancelled) in enumerate(given)
            ],
        }
        for n, (item, given) in enumerate(answers_by_item.items())
    ]


def test_round_trip_with_two_annotators_who_disagree_on_one_item(world):
    out, _ = exported(world)
    export = ls_export(
        {
            "t0": [(FALSIFIED_CHOICE, 1, False), (FALSIFIED_CHOICE, 2, False)],
            "t1": [(FALSIFIED_CHOICE, 1, False), (PRISTINE_CHOICE, 2, False)],  # they disagree
            "t2": [(PRISTINE_CHOICE, 1, False), ("", 2, True)],  # user 2 skipped it
            "s0": [(PRISTINE_CHOICE, 1, False)],
        }
    )
    path = world["root"] / "export.json"
    path.write_text(json.dumps(export))
    judgements, problems, skipped = read_judgements(path, annotator=None, choices=DEFAULT_CHOICES)
    assert problems == [] and skipped == ["item 't2': skipped or cancelled by label-studio-user-2; not imported"]
    result = check_import(judgements, out, world["labels"], problems)
    assert result.problems == [] and result.disputed == ["t1"]
    # user1|user2 share t0 (f,f) and t1 (f,p): observed 1/2; user1 f twice, user2 f once of 2:
    # expected = 1*1/2 (falsified) + 0*1/2 (pristine) = 1/2: kappa = 0
    assert result.agreement["train"]["cohen_kappa"] == {"label-studio-user-1|label-studio-user-2": pytest.approx(0.0)}
    apply_import(result, world["labels"])
    train = resolve(read_label_rows(world["labels"]["train"]))
    assert train.gold.to_dicts() == [{"id": "t0", "gold_label": "falsified"}, {"id": "t2", "gold_label": "pristine"}]
    assert train.disputed == ["t1"]
    assert resolve(read_label_rows(world["labels"]["test"])).gold.to_dicts() == [
        {"id": "s0", "gold_label": "pristine"}
    ]
    assert not world["labels"]["val"].exists()


@pytest.mark.parametrize(
    "content, name, problem",
    [
        ('{"id": "t0", "label": "fake", "annotator": "ann"}\n', "bad.jsonl", "label 'fake' is not one of"),
        (
            '{"id": "nope", "label": "pristine", "annotator": "ann"}\n',
            "bad.jsonl",
            "'nope' is not in the exported queue",
        ),
        ('{"id": "t0", "label": "pristine"}\n', "bad.jsonl", "missing or empty ['annotator']"),
        ("id,label,annotator\nt0,pristine,ann\nt1,maybe,ann\n", "bad.csv", "label 'maybe'"),
        ("{not json", "bad.json", "not JSON"),
        ("id\tlabel\n", "bad.tsv", "unknown format"),
    ],
)
def test_an_import_with_any_problem_refuses_the_whole_file_and_leaves_the_labels_byte_identical(
    world, content, name, problem
):
    out, _ = exported(world)
    append_label_rows(world["labels"]["train"], [judgement("t2", "pristine", "ann")])
    before = world["labels"]["train"].read_bytes()
    path = world["root"] / name
    path.write_text(
        '{"id": "t1", "label": "falsified", "annotator": "ann"}\n' + content if name.endswith(".jsonl") else content
    )
    judgements, problems, _ = read_judgements(path, annotator=None, choices=DEFAULT_CHOICES)
    result = check_import(judgements, out, world["labels"], problems)
    assert any(problem in p for p in result.problems), result.problems
    with pytest.raises(ValueError, match="writes nothing"):
        apply_import(result, world["labels"])
    assert world["labels"]["train"].read_bytes() == before


def test_plain_rows_take_the_annotator_from_the_command_line_and_append_with_provenance(world):
    out, _ = exported(world)
    path = world["root"] / "mine.csv"
    path.write_text("id,label,note\nt0,falsified,\nt1,pristine,looked it up\n")
    judgements, problems, _ = read_judgements(path, annotator="desk-1", choices=DEFAULT_CHOICES)
    result = check_import(judgements, out, world["labels"], problems)
    apply_import(result, world["labels"])
    apply_import(check_import([judgement("t0", "pristine", "desk-2")], out, world["labels"], []), world["labels"])
    rows = read_label_rows(world["labels"]["train"])
    assert [(r["id"], r["annotator"], r.get("note"), r["origin"]) for r in rows[:2]] == [
        ("t0", "desk-1", None, "csv"),
        ("t1", "desk-1", "looked it up", "csv"),
    ]
    assert len(rows) == 3  # appended, never rewritten


def test_a_broken_labels_file_names_its_line():
    path = Path(__file__)  # any non-JSONL file
    with pytest.raises(LabelFileError, match=rf"{path.name}:1: not JSON"):
        read_label_rows(path)
