"""``mmkd annotate export`` and ``mmkd annotate import``: the queue from the DAG's own files, labels back in.

Export computes the items the method selects from the teachers' answers on disk (``split.select`` in
params.yaml, as the ``split`` stage does), drops those already labelled, and adds the evaluation sample of val and
test where the dataset has no gold. Import checks a file of judgements against the last export and appends them to
``annotation/labels/<split>.jsonl``, or changes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmkd import paths
from mmkd.annotation.exchange import apply_import, check_import, export_queue, read_judgements
from mmkd.annotation.labels import LabelFileError, read_label_rows, resolve
from mmkd.annotation.queue import build_queue
from mmkd.schema import gold_path, read_answers, read_gold, read_items
from mmkd.selection.conflicts import Selection, answers_wide, find_conflicts, select_items
from mmkd.stage_io import read_params


def dataset_gold_ids(data_dir: str | Path, split: str) -> set[str]:
    """Ids that have a gold label in the dataset's own ``<split>.gold.parquet`` (none when it has no such file)."""
    path = gold_path(paths.items_file(data_dir, split))
    return set(read_gold(path)["id"]) if path.exists() else set()


def selected_ids(params: dict) -> tuple[list[str], list[str]]:
    """The train items the method reads gold for (``split.select`` over the teachers' train answers, as the
    ``split`` stage selects them), and those only the enabled baselines add (mmkd.selection.baselines)."""
    teachers = sorted(params["teacher_names"])
    answers = {t: read_answers(paths.answers_file(t, "train")) for t in teachers}
    unparsed, selection = params["split"]["unparsed"], Selection(**params["split"]["select"])
    wide = find_conflicts(answers_wide(answers), teachers, unparsed)
    method = select_items(wide, teachers, selection, unparsed).filter("selected")["id"].to_list()
    extra = []
    if "random_budget" in params["baselines"]["stage2"]:
        sample = Selection("random", budget=len(method), seed=selection.seed)
        extra += select_items(wide, teachers, sample, unparsed).filter("selected")["id"].to_list()
    if "full_supervision" in params["baselines"]["supervised"]:
        extra += select_items(wide, teachers, Selection("all"), unparsed).filter("selected")["id"].to_list()
    return method, sorted(set(extra) - set(method))


def export_command(args: argparse.Namespace) -> int:
    """Write the queue for people (Label Studio tasks and config, plain JSONL and CSV)."""
    params = read_params(args.params)
    settings = params["annotation"]
    data_dir = params["data"]["dir"]
    missing = [str(p) for t in params["teacher_names"] if not (p := paths.answers_file(t, "train")).exists()]
    if missing:
        print(f"annotate export: no teacher answers yet ({', '.join(missing)}); run `dvc repro` first")
        return 2
    labelled, disputed = set(), set()
    for split in paths.LABELLED_SPLITS:
        resolution = resolve(read_label_rows(paths.human_labels_file(split)))
        labelled |= set(resolution.gold["id"]) | dataset_gold_ids(data_dir, split)
        disputed |= set(resolution.disputed)
    items = {s: read_items(paths.items_file(data_dir, s)) for s in paths.LABELLED_SPLITS}
    eval_candidates = {s: sorted(set(items[s]["id"]) - dataset_gold_ids(data_dir, s)) for s in ("val", "test")}
    budget = args.budget if args.budget is not None else settings["budget"]
    method, baseline_ids = selected_ids(params)
    queue = build_queue(
        method,
        {t: read_answers(paths.answers_file(t, "train")) for t in params["teacher_names"]},
        labelled,
        disputed,
        eval_candidates,
        settings["eval_sample"],
        budget=budget,
        seed=params["split"]["select"]["seed"],
        baseline_ids=baseline_ids,
    )
    answers = {
        s: {t: read_answers(paths.answers_file(t, s)) for t in params["teacher_names"]} for s in paths.LABELLED_SPLITS
    }
    dirs = {s: Path(data_dir) for s in paths.LABELLED_SPLITS}
    show = settings["show_teachers"] if args.show_teachers is None else args.show_teachers
    counts = export_queue(
        queue,
        items,
        dirs,
        answers,
        args.out,
        show_teachers=show,
        choices=dict(map(tuple, settings["label_studio_choices"])),
    )
    summary = ", ".join(f"{n} for {purpose}" for purpose, n in counts.items()) or "nothing: every item is labelled"
    print(f"annotate export: {len(queue)} item(s) to label ({summary}) -> {args.out}")
    return 0


def import_command(args: argparse.Namespace) -> int:
    """Check a file of judgements against the last export and append them to the labels files, or change nothing."""
    params = read_params(args.params)
    choices = dict(map(tuple, params["annotation"]["label_studio_choices"]))
    labels_files = {s: paths.human_labels_file(s) for s in paths.LABELLED_SPLITS}
    try:
        judgements, problems, skipped = read_judgements(args.file, annotator=args.annotator, choices=choices)
        result = check_import(judgements, args.queue, labels_files, problems)
    except LabelFileError as exc:
        print(f"annotate import: {exc}")
        return 2
    for line in skipped:
        print(f"annotate import: {line}")
    if result.problems:
        print(f"annotate import: {args.file}: {len(result.problems)} problem(s); nothing was imported:")
        for line in result.problems:
            print(f"  {line}")
        return 2
    apply_import(result, labels_files)
    for split, rows in sorted(result.rows.items()):
        kappa = result.agreement[split]["cohen_kappa"]
        print(f"annotate import: {len(rows)} judgement(s) -> {labels_files[split]}; Cohen's kappa {kappa or 'n/a'}")
    if result.disputed:
        print(f"annotate import: annotators tie on {sorted(result.disputed)}: not used until one more judgement")
    print("annotate import: now `dvc repro` (it re-runs `split` and what depends on the labels)")
    return 0
