"""The transformers callbacks of a training phase: its dvclive logs (rank 0 only) and its progress bar.

The logs leave out what differs between machines or runs (the temporary output folder, wall-clock speeds), so that
the same run on the same machine writes the same bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.integrations import DVCLiveCallback

from mmkd.console import verbose
from mmkd.training.distributed import is_main_process

log = logging.getLogger(__name__)

# What a training log must not record, so that the same run on the same machine writes the same bytes: the trainer's
# temporary output folder, and wall-clock speeds (TrainingProgress logs the time instead).
MACHINE_SPECIFIC_ARGS = ("output_dir", "logging_dir")
MACHINE_SPECIFIC_METRICS = ("train_runtime", "train_samples_per_second", "train_steps_per_second")


class _StepAlignedDVCLive(DVCLiveCallback):
    """transformers' dvclive callback, with the optimiser step as the step (it counts log calls) and without the
    machine-specific values above."""

    def setup(self, args, state, model):
        self._initialized = True
        if state.is_world_process_zero:
            params = args.to_dict()
            self.live.log_params({k: v for k, v in params.items() if k not in MACHINE_SPECIFIC_ARGS})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.live is not None:
            self.live.step = state.global_step
        logs = {k: v for k, v in (logs or {}).items() if k not in MACHINE_SPECIFIC_METRICS}
        super().on_log(args, state, control, logs=logs, **kwargs)


class TrainingProgress(ProgressCallback):
    """One bar per training phase (steps, rate, ETA, the latest loss) in place of transformers' bar and the dict it
    prints at every logging step. Where bars are off (``TQDM_DISABLE``: jobs side by side) it logs one line each
    tenth of the way instead. ``MMKD_VERBOSE=1`` keeps transformers' own output (mmkd.console)."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc, self.loss, self.started, self.reported = desc, None, 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", dynamic_ncols=True)
        self.current_step, self.started = 0, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        bar = self.training_bar
        if bar is None or not bar.disable or state.global_step * 10 < (self.reported + 1) * state.max_steps:
            return
        self.reported = state.global_step * 10 // state.max_steps
        elapsed = time.perf_counter() - self.started
        eta = elapsed * (state.max_steps - state.global_step) / state.global_step
        log.info(
            "%s: step %d/%d, loss %s, %.1f steps/s, ETA %.0f s",
            self.desc,
            state.global_step,
            state.max_steps,
            "n/a" if self.loss is None else f"{self.loss:.4g}",
            state.global_step / elapsed,
            eta,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.loss = logs["loss"]
            self.training_bar.set_postfix(loss=f"{self.loss:.4g}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if not state.is_world_process_zero:
            return
        log.info(
            "%s: %d steps in %.0f s, last logged loss %s",
            self.desc,
            state.global_step,
            time.perf_counter() - self.started,
            "n/a" if self.loss is None else f"{self.loss:.4g}",
        )


def quiet_progress(trainer, live_dir) -> None:
    """Swap transformers' progress output for ``TrainingProgress`` (unless verbose), named after the run's logs."""
    if verbose():
        return
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    parts = Path(live_dir).parts
    name = parts[parts.index("dvclive") + 1 :] if "dvclive" in parts else parts[-2:]  # stage1, stage2/sft, ...
    trainer.add_callback(TrainingProgress("/".join(name)))


def live_callbacks(live_dir: str | Path, params: dict) -> list[TrainerCallback]:
    """The dvclive logger of a training phase, on the main process only: the other ranks write no logs."""
    return [_live_callback(live_dir, params)] if is_main_process() else []


def open_live(live_dir: str | Path):
    """A dvclive logger writing to ``live_dir``, also in a git repo without a commit yet (``git init``, ``dvc init``,
    ``dvc repro``): dvclive 3.49 reads HEAD there before it checks for commits and stops with "Empty git repo"
    (scmrepo's SCMError, which its own guard does not catch). There it logs as outside a DVC repo: the same files."""
    from scmrepo.exceptions import SCMError

    from dvclive import Live

    class _Live(Live):
        def _init_dvc(self):
            try:
                super()._init_dvc()
            except SCMError as err:
                log.info("dvclive: %s; logging to %s as outside a DVC repo", err, live_dir)
                self._dvc_repo, self._save_dvc_exp = None, False
                self._dvc_file = self._init_dvc_file()

    # save_dvc_exp=False and dvcyaml=None: the pipeline, not dvclive, owns experiments and dvc.yaml.
    return _Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)


def _live_callback(live_dir: str | Path, params: dict):
    live = open_live(live_dir)
    live.log_params(params)
    return _StepAlignedDVCLive(live=live)
