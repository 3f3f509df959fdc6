"""The run folder: what a training run leaves on disk, and how it is read back (`load_run`) or continued.

A run folder holds everything needed to continue, reuse or inspect a training run:

    config.toml      the resolved config (enough to rebuild the model)
    checkpoints/     tf.train.Checkpoint files `ckpt-STEP`: weights, optimizer state with the EMA weights, the
                     step counter, the model's random stream and the running means of the loss terms; the last
                     `train.keep_checkpoints` are kept
    metrics.csv      `step`, then every loss term (and `val_*` terms), one row per log interval
    logs/            TensorBoard scalars
    previews/        PNG: condition | sample | truth | std | schedule, every `preview_every` steps

`cvdm-tf infer/export/eval --model RUN` read it with `load_run`; `cvdm-tf train --resume --out RUN` continues it
(the loop itself is in `training.py`).

Why a kill at any moment leaves the last complete checkpoint readable (read in TensorFlow 2.21's own code):
    1. `Checkpoint._write` -> `functional_saver.MultiDeviceSaver.save` writes every shard under `ckpt-N_temp/`,
       then the `MergeV2Checkpoints` op (`MergeBundles` in core/util/tensor_bundle) renames the data files to
       `ckpt-N.data-*` and writes `ckpt-N.index`. The index is written in place, not renamed: a kill here can
       leave a half-written `ckpt-N`, but nothing points at it yet and no older file is touched.
    2. Only after that returns does `CheckpointManager.save`'s write callback name `ckpt-N` in the `checkpoint`
       index file, through `file_io.atomic_write_string_to_file` (a temporary file renamed onto it). Then it
       deletes the checkpoints beyond `max_to_keep` and writes the index again without them.
    So the `checkpoint` index always names a complete checkpoint, the new one or the previous one. TensorFlow
    does not fsync: this holds for a killed process, not for a power cut. On resume, the files of checkpoints
    newer than the restored one (debris of a kill during a save) are deleted, and so are the metrics.csv rows
    and TensorBoard events after the restored step: the resumed run logs those steps again, identically (the
    data pipeline is a pure function of (seed, element) and the model's random stream is in the checkpoint).
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

from cvdm_tf import builtin, io
from cvdm_tf.config import Config, load_config
from cvdm_tf.errors import InputError
from cvdm_tf.tasks import make_task

# TensorFlow and the model are imported where a checkpoint is touched: reading a run's config (`model_config`)
# is what a command checks its --model with before anything slow happens.

# What `--resume` may change: how long to train and how often to save (the model and data are the run's own).
RESUMABLE = ("steps", "checkpoint_every")


def resolve_config(config: Config) -> Config:
    """Fill in what the task decides (channel counts), so the saved config rebuilds the same model."""
    task = make_task(config.task, config.data)
    if config.model.mean.startswith("condition") and not task.condition_has_estimate:
        raise InputError(f"model.mean = \"{config.model.mean}\" needs a condition that holds an estimate of the "
                         f"target; the {config.task} condition holds none as configured ({task.estimate_option})")
    return config.replace(model={"condition_channels": task.condition_channels,
                                 "target_channels": task.target_channels})


# === Loading a run ===


def load_run(run_dir, use_ema: bool = True):
    """(config, task, model) of a run folder, restored from its last checkpoint, EMA weights swapped in; or of a
    built-in model (`builtin:NAME`, its shipped EMA weights)."""
    import tensorflow as tf

    if builtin.is_builtin(run_dir):
        return builtin.load(run_dir)
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not run_dir.is_dir() or not config_path.is_file():
        raise InputError(f"{run_dir}: not a run folder (no config.toml; pass the --out folder of `cvdm-tf train`, "
                         f"or a built-in model: {', '.join(builtin.PREFIX + n for n in builtin.names())})")
    if (run_dir / builtin.WEIGHTS).is_file() and not (run_dir / "checkpoints").is_dir():
        return builtin.load_folder(run_dir)  # weights only: a distilled student (`cvdm-tf distil`)
    config = load_config(config_path)
    model, optimizer, checkpoint = build_for_checkpoint(config)
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise InputError(f"{run_dir}: run folder has no checkpoint yet")
    checkpoint.read(latest).expect_partial()
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # mixed_float16: the loss scale's Adam
    if use_ema and optimizer.use_ema:
        optimizer.finalize_variable_values(model.trainable_variables)
    return config, make_task(config.task, config.data), model


def build_for_checkpoint(config: Config):
    import tensorflow as tf

    from cvdm_tf.model import build_model, make_optimizer

    model = build_model(config)
    optimizer = make_optimizer(config.train, model)  # the model may clip its networks apart
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    # The loss trackers' running means too, so a resumed log interval averages the same steps.
    trackers = {tracker.name: [variable.value for variable in tracker.variables] for tracker in model.metrics}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, rng=model.seed_generator.state.value,
                                     metrics=trackers)
    return model, optimizer, checkpoint


def model_config(spec) -> Config:
    """The config of a `--model` value: a run folder's config.toml or a built-in model's."""
    if builtin.is_builtin(spec):
        return load_config(builtin.folder(spec) / "config.toml")
    if not (Path(spec) / "config.toml").is_file():
        raise InputError(f"{spec}: not a run folder (no config.toml; pass the --out folder of `cvdm-tf train`, or "
                         f"a built-in model: {', '.join(builtin.PREFIX + n for n in builtin.names())})")
    return load_config(Path(spec) / "config.toml")


def run_config(run_dir) -> Config:
    """The saved config of a run folder: what `--resume` continues. An InputError if there is no run there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder, nothing to resume")
    if not (run_dir / "config.toml").is_file():
        raise InputError(f"{run_dir}: not a run folder (no config.toml), nothing to resume")
    return load_config(run_dir / "config.toml")



def latest_checkpoint(folder: Path):
    """The prefix the `checkpoint` index names (None before the first save); an InputError if its files are gone."""
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(folder))
    if state is None or not state.model_checkpoint_path:
        return None
    prefix = state.model_checkpoint_path
    if not tf.io.gfile.exists(prefix + ".index"):
        raise InputError(f"{folder}: the checkpoint index names {Path(prefix).name}, but its files are missing")
    return prefix


def discard_after(run_dir: Path, step: int):
    """Forget what a run did after the checkpoint it resumes from: it will do it again, identically.

    Deletes uncommitted checkpoint files (`ckpt-N.*` and `ckpt-N_temp/` with N > step, left by a kill during or
    after a save; `checkpoint.tmp*`, left by a kill while the index was written) and the TensorBoard events after
    `step`. metrics.csv rows after `step` go in `MetricsLog`.
    """
    pattern = re.compile(r"ckpt-(\d+)(\.index|\.data-\d+-of-\d+|_temp)$")
    folder = run_dir / "checkpoints"
    for path in folder.iterdir() if folder.is_dir() else ():
        match = pattern.match(path.name)
        if path.is_dir() and match and int(match.group(1)) > step:
            shutil.rmtree(path)
        elif (match and int(match.group(1)) > step) or re.fullmatch(r"checkpoint\.tmp[0-9a-f]+", path.name):
            path.unlink()
    for path in sorted((run_dir / "logs").glob("events.out.tfevents.*")):
        _truncate_events(path, step)


def _truncate_events(path: Path, step: int):
    """Rewrite a TensorBoard event file without the summaries after `step` (and a record cut short by a kill)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    kept, dropped = [], False
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            record = record.numpy()
            event = event_pb2.Event.FromString(record)
            if event.HasField("summary") and event.step > step:
                dropped = True
            else:
                kept.append(record)
    except tf.errors.DataLossError:
        dropped = True
    if dropped:
        with io.atomic_write(path) as tmp:
            with tf.io.TFRecordWriter(str(tmp)) as records:
                for record in kept:
                    records.write(record)


class MetricsLog:
    """metrics.csv: a `step` column then the loss terms, rewritten atomically at every log. On resume, rows after
    the restored step are dropped at once (the resumed run logs them again), everything before is kept."""

    def __init__(self, path: Path, start: int):
        self.path = path
        self.rows = []
        if path.is_file():
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            self.rows = [row for row in rows if start > 0 and int(row["step"]) <= start]
            if self.rows and len(self.rows) < len(rows):
                self._write()
            elif not self.rows:
                path.unlink()

    def append(self, step: int, values: dict):
        self.rows.append({"step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        self._write()

    def _write(self):
        columns = ["step"] + [k for k in self.rows[-1] if k != "step"]
        lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in self.rows]
        io.write_text(self.path, "\n".join(lines) + "\n")
