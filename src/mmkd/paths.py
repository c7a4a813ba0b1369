"""Where each stage writes its outputs: every path is defined here once (dvc.yaml spells the same paths, and
tests/test_dvc_yaml.py keeps the two equal). Paths are relative to the repository root, where stages run."""

from __future__ import annotations

import re
from pathlib import Path

ANSWERS = Path("data/answers")  # label@<teacher>: <teacher>/<split>.parquet
SPLIT = Path("data/split")  # split: the selected (by default conflict) items, their gold labels, the Stage-2 data
CONFLICTS = SPLIT / "conflicts.parquet"
STAGE2_SFT = SPLIT / "sft.parquet"
STAGE2_PAIRS = SPLIT / "pairs.parquet"
BASELINE_SPLITS = Path("data/baselines")  # split: <baseline>/ holds the same three tables for a Stage-2 baseline
MODELS = Path("models")  # bootstrap@<group>: <group>/<model>
STAGE1_ADAPTER = MODELS / "stage1"
STAGE2_ADAPTER = MODELS / "stage2"
BASELINE_MODELS = MODELS / "baselines"  # baseline@<name>: <name>/
STAGE2_BASELINES = ("random_budget",)  # Stage 2 on another selection of gold labels (see mmkd.selection.conflicts)
# Stage 1's recipe from the base model on gold labels only (no teacher answers): ``baselines.supervised`` picks them
SUPERVISED_BASELINES = ("gold_only", "full_supervision")
PREDICTIONS = Path("data/predictions")  # evaluate: <model>.parquet, teachers/<teacher>.parquet
METRICS = Path("metrics")
CONFUSION = METRICS / "confusion"  # evaluate: <model>.csv, teachers/<teacher>.csv
ROC = METRICS / "roc"  # evaluate: the ROC curve of each scored system, named as CONFUSION's files
RELIABILITY = METRICS / "reliability"  # evaluate: the reliability diagram of each scored system, likewise
DVCLIVE = Path("dvclive")  # training logs: bootstrap/<group>/<model>, stage1, stage2/{sft,dpo}, baselines/<name>
RUN_LOGS = Path("logs")  # per-run accounting that differs between runs (git-ignored, not a DVC output)
# People's labels, an input of the DAG (in git): labels/<split>.jsonl; queue/ is `mmkd annotate export`'s output
ANNOTATION = Path("annotation")
ANNOTATION_QUEUE = ANNOTATION / "queue"

# The splits every teacher labels: train (the targets), val (the teacher's own threshold) and test (its score)
LABELLED_SPLITS = ("train", "val", "test")


def split_tables(baseline: str | None = None) -> tuple[Path, Path, Path]:
    """The selected items, Stage-2 SFT rows and DPO pairs: of the method, or of a Stage-2 baseline."""
    folder = SPLIT if baseline is None else BASELINE_SPLITS / baseline
    return folder / CONFLICTS.name, folder / STAGE2_SFT.name, folder / STAGE2_PAIRS.name


def stage2_dirs(baseline: str | None = None) -> tuple[Path, Path]:
    """Where Stage 2 (or a Stage-2 baseline) writes its adapter and its training logs."""
    return (STAGE2_ADAPTER, DVCLIVE / "stage2") if baseline is None else baseline_dirs(baseline)


def baseline_dirs(baseline: str) -> tuple[Path, Path]:
    """Where a trained baseline writes its adapter and its training logs."""
    return BASELINE_MODELS / baseline, DVCLIVE / "baselines" / baseline


# Extra test sets (``data.test_sets``): items and images in TEST_SETS/<set>/ (what labelling may read), gold labels
# apart in TEST_GOLD/<set>/ (what only evaluate reads), written by the stage that makes the set (world@demo: ood;
# prepare@<name>: e.g. verite)
TEST_SETS = Path("data/test_sets")
TEST_GOLD = Path("data/test_gold")


def test_set_items(test_set: str) -> Path:
    """``data/test_sets/<set>/test.parquet``: the items of an extra test set."""
    return TEST_SETS / test_set / "test.parquet"


def test_set_gold(test_set: str) -> Path:
    """``data/test_gold/<set>/test.gold.parquet``: its gold labels, kept out of the folder labelling reads."""
    return TEST_GOLD / test_set / "test.gold.parquet"


TEST_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # one folder name, no path: it names files under data/


def missing_test_set_inputs(test_sets, teachers=(), gold: bool = False) -> list[str]:
    """What a stage that reads the extra ``test_sets`` lacks, one line each with its fix (empty: all there): a name
    that is not a plain folder name, a set without items (``test_set_items``), and with ``gold``, without gold labels
    or without an answer file of one of ``teachers``. A stage checks this before its first item, so that a set
    missing from the data does not stop it after hours of work."""
    problems = []
    for s in test_sets:
        if not isinstance(s, str) or not TEST_SET_NAME.fullmatch(s) or s in (".", ".."):
            problems.append(f"data.test_sets: {s!r} is not a test set name (letters, digits, _ . -; no path)")
            continue
        prepare = (
            f"prepare it (a data.prepare_test.{s} entry, or world@demo for the demo's ood) and run `dvc repro`, "
            f"or remove {s!r} from data.test_sets"
        )
        label = "label it: `dvc repro` runs every label@<teacher> on each set in data.test_sets"
        wanted = [(test_set_items(s), prepare)] + ([(test_set_gold(s), prepare)] if gold else [])
        wanted += [(test_set_answers(t, s), label) for t in teachers]
        problems += [f"data.test_sets: {s!r} has no {path}; {fix}" for path, fix in wanted if not path.is_file()]
    return problems


def test_set_answers(teacher: str, test_set: str) -> Path:
    """``data/answers/<teacher>/test_sets/<set>.parquet``: one teacher's answers to an extra test set."""
    return ANSWERS / teacher / "test_sets" / f"{test_set}.parquet"


def answers_file(teacher: str, split: str) -> Path:
    """``data/answers/<teacher>/<split>.parquet``: one teacher's answer to every item of a split."""
    return ANSWERS / teacher / f"{split}.parquet"


def items_file(data_dir: str | Path, split: str) -> Path:
    """``<data.dir>/<split>.parquet``: the items of a split (their gold labels: ``mmkd.schema.gold_path``)."""
    return Path(data_dir) / f"{split}.parquet"


def metrics_file(stage: str) -> Path:
    """``metrics/<stage>.json`` (``teachers/<teacher>`` for a label stage)."""
    return METRICS / f"{stage}.json"


def run_log_file(stage: str) -> Path:
    """``logs/<stage>.json`` (``label/<teacher>`` for a label stage): what one run did, e.g. requests and time."""
    return RUN_LOGS / f"{stage}.json"


def bootstrap_dirs(group: str) -> tuple[Path, Path]:
    """Where ``bootstrap@<group>`` writes its models and their training logs."""
    return MODELS / group, DVCLIVE / "bootstrap" / group


def human_labels_file(split: str) -> Path:
    """People's judgements on one split's items (mmkd.annotation.labels): split reads train's, the training stages
    val's, evaluate val's and test's."""
    return ANNOTATION / "labels" / f"{split}.jsonl"
