"""The run folder and the training loop around `CVDM.train_step`.

A run folder holds everything needed to continue, reuse or inspect a training run:

    config.toml      the resolved config (enough to rebuild the model)
    checkpoints/     tf.train.Checkpoint files `ckpt-STEP`: weights, optimizer state with the EMA weights, the
                     step counter, the model's random stream and the running means of the loss terms; the last
                     `train.keep_checkpoints` are kept
    metrics.csv      `step`, then every loss term (and `val_*` terms), one row per log interval
    logs/            TensorBoard scalars
    previews/        PNG: condition | sample | truth | std | schedule, every `preview_every` steps

`cvdm-tf infer/export/eval --model RUN` read it with `load_run`; `cvdm-tf train --resume --out RUN` continues it.

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
import math
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import tensorflow as tf

from cvdm_tf import io
from cvdm_tf.config import Config, dump_config, load_config
from cvdm_tf.data.pipeline import make_dataset
from cvdm_tf.tasks import make_task
from cvdm_tf.errors import InputError
from cvdm_tf.model import build_model, ema_weights, make_optimizer
from cvdm_tf.sampler import Sampler

# What `--resume` may change: how long to train and how often to save (the model and data are the run's own).
RESUMABLE = ("steps", "checkpoint_every")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or weights); the message names the step and the term."""


def resolve_config(config: Config) -> Config:
    """Fill in what the task decides (channel counts), so the saved config rebuilds the same model."""
    task = make_task(config.task, config.data)
    if config.model.mean == "condition" and not task.condition_has_estimate:
        raise InputError(f"model.mean = \"condition\" needs a condition that holds an estimate of the target; the "
                         f"{config.task} condition holds none as configured ({task.estimate_option})")
    return config.replace(model={"condition_channels": task.condition_channels,
                                 "target_channels": task.target_channels})


# === Loading a run ===


def load_run(run_dir, use_ema: bool = True):
    """(config, task, model) of a run folder, restored from its last checkpoint, EMA weights swapped in."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not run_dir.is_dir() or not config_path.is_file():
        raise InputError(f"{run_dir}: not a run folder (no config.toml; pass the --out folder of `cvdm-tf train`)")
    config = load_config(config_path)
    model, optimizer, checkpoint = _build(config)
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise InputError(f"{run_dir}: run folder has no checkpoint yet")
    checkpoint.read(latest).expect_partial()
    if use_ema and optimizer.use_ema:
        optimizer.finalize_variable_values(model.trainable_variables)
    return config, make_task(config.task, config.data), model


def _build(config: Config):
    model = build_model(config)
    optimizer = make_optimizer(config.train)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    # The loss trackers' running means too, so a resumed log interval averages the same steps.
    trackers = {tracker.name: [variable.value for variable in tracker.variables] for tracker in model.metrics}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, rng=model.seed_generator.state.value,
                                     metrics=trackers)
    return model, optimizer, checkpoint


# === Training ===


def run_config(run_dir) -> Config:
    """The saved config of a run folder: what `--resume` continues. An InputError if there is no run there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder, nothing to resume")
    if not (run_dir / "config.toml").is_file():
        raise InputError(f"{run_dir}: not a run folder (no config.toml), nothing to resume")
    return load_config(run_dir / "config.toml")


def train(config: Config, out_dir, resume: bool = False, progress=None) -> Path:
    """Train a CVDM into `out_dir`, or with `resume` continue the run there from its last checkpoint.

    Everything is validated and loaded before `out_dir` is touched, so bad input leaves nothing behind. With
    `resume` the run's own config.toml is used; only `RESUMABLE` train fields are taken from `config`.
    `train.steps` is the total, so a resumed run ends at the same step as an uninterrupted one, with the same
    weights: the optimizer state, the step counter, the random stream and the data position are restored.

    Args:
        config: Config. What to train (with `resume`: the new train.steps / checkpoint_every).
        out_dir: str or Path. The run folder: absent or empty, or the run to continue with `resume`.
        resume: bool. Continue the run in `out_dir`.
        progress: Progress or None (a new one on stderr).

    Returns:
        Path: `out_dir`.

    Raises:
        InputError: bad input; nothing was written.
        TrainingError: a non-finite loss; no checkpoint was written after the last good step.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after saving a checkpoint at the current step.
    """
    out_dir = Path(out_dir)
    progress = progress or Progress()
    try:
        run = _prepare(config, out_dir, resume, progress)
        if run.start >= run.config.train.steps:
            progress.message(f"{out_dir}: already trained for {run.start} steps (--steps "
                             f"{run.config.train.steps}); nothing to do")
            return out_dir
        size = run.config.data.image_size
        progress.message(
            f"{'resuming' if resume else 'training'} {run.config.task} ({run.config.model.schedule} schedule) on "
            f"{run.described}, {size} x {size} crops, batch "
            f"{run.config.train.batch_size}, "
            + (f"steps {run.start} -> {run.config.train.steps}" if resume else f"{run.config.train.steps} steps")
            + f", run folder {out_dir}"
        )
        files = _open_folder(run, out_dir, resume)
    except KeyboardInterrupt:
        progress.close("interrupted before training started")
        raise
    return _loop(run, files, out_dir, progress)


def _prepare(config: Config, out_dir: Path, resume: bool, progress) -> SimpleNamespace:
    """Validate and load everything (config, images, model, checkpoint, datasets); nothing on disk changes."""
    if resume:
        config = run_config(out_dir).replace(train={name: getattr(config.train, name) for name in RESUMABLE})
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: run folder exists and is not empty (use --resume to continue it)")
    config = resolve_config(config)
    task = make_task(config.task, config.data)
    tc = config.train
    size = config.data.image_size
    train_bank, val_bank, described = task.training_banks(tc.validation_fraction, tc.seed, size, warn=progress.message)
    # Unseeded Keras initializers draw from the global generators: without this, two runs with the same
    # train.seed start from different weights. (Sets Python's, NumPy's and TensorFlow's global seeds.)
    keras.utils.set_random_seed(tc.seed)
    model, optimizer, checkpoint = _build(config)
    latest = _latest_checkpoint(out_dir / "checkpoints") if resume else None
    if latest:
        try:
            checkpoint.read(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as err:
            raise InputError(f"{latest}: cannot restore this checkpoint ({str(err).splitlines()[0]})") from None
    start = int(optimizer.iterations.numpy())
    data = make_dataset(task, train_bank, size, tc.batch_size, tc.seed, start=start * tc.batch_size,
                        augment=config.data.augment)
    validation = None
    if val_bank is not None:
        validation = make_dataset(task, val_bank, size, tc.batch_size, tc.seed + 1,
                                  augment=False).take(tc.validation_batches).cache()
    # Drawing the preview batch runs the pipeline once, before anything is written.
    preview_batch = next(iter(validation if validation is not None else data))
    return SimpleNamespace(config=config, model=model, checkpoint=checkpoint, start=start, data=data,
                           validation=validation, preview_batch=preview_batch, described=described)


def _open_folder(run: SimpleNamespace, out_dir: Path, resume: bool) -> SimpleNamespace:
    """Create (or, resuming, tidy) the run folder: config.toml, checkpoint manager, metrics.csv, TensorBoard.
    A folder this creates is removed again if this fails."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(out_dir / "config.toml", dump_config(run.config))
        if resume:
            _discard_after(out_dir, run.start)
        manager = tf.train.CheckpointManager(run.checkpoint, str(out_dir / "checkpoints"),
                                             max_to_keep=run.config.train.keep_checkpoints)
        log = MetricsLog(out_dir / "metrics.csv", run.start)
        writer = tf.summary.create_file_writer(str(out_dir / "logs"))
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return SimpleNamespace(manager=manager, log=log, writer=writer)


def _loop(run: SimpleNamespace, files: SimpleNamespace, out_dir: Path, progress) -> Path:
    """The training loop. A signal only sets a flag; the loop stops between steps, so what it saves is consistent."""
    config, model, tc = run.config, run.model, run.config.train
    validation, writer = run.validation, files.writer
    preview_sampler = Sampler(model)
    step_fn = tf.function(model.train_step, reduce_retracing=True)
    test_fn = tf.function(model.test_step, reduce_retracing=True)
    step = saved = run.start

    def save():
        nonlocal saved
        if not _finite_weights(model):  # a finite loss can still end in an update that overflowed
            raise TrainingError(f"non-finite weights after the update of step {step}; {_unsaved(saved)}")
        writer.flush()  # the checkpoint then covers everything TensorBoard holds up to this step
        files.manager.save(checkpoint_number=step)
        saved = step

    hint = f"continue with: cvdm-tf train --resume --out {out_dir}"
    stop = StopRequests()
    progress.begin(tc.steps, run.start)
    try:
        with stop:
            iterator = iter(run.data)
            while step < tc.steps and not stop.signal:
                logs = step_fn(next(iterator))
                step += 1
                if not math.isfinite(float(logs["loss"])):  # before anything is logged or saved
                    _check_finite({name: float(value) for name, value in logs.items()}, step, saved)
                if step % tc.log_every == 0 or step == tc.steps:
                    values = {name: float(value) for name, value in logs.items()}
                    _reset(model)
                    if validation is not None:
                        for batch in validation:
                            val = test_fn(batch)
                        values.update({f"val_{k}": float(v) for k, v in val.items()})
                        _reset(model)
                    _check_finite(values, step, saved)
                    files.log.append(step, values)
                    with writer.as_default(step=step):
                        for name, value in values.items():
                            tf.summary.scalar(name, value)
                    progress.update(step, values)
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    save()
                if step % tc.preview_every == 0 or step == tc.steps:
                    write_preview(out_dir / "previews" / f"step{step:07d}.png", preview_sampler, config,
                                  run.preview_batch)
            if stop.signal and step > saved:
                save()
    except KeyboardInterrupt:  # a second Ctrl-C, which stops at once
        last = f"last checkpoint at step {saved}" if saved else "no checkpoint yet"
        progress.close(f"interrupted at step {step} ({last}); {hint}")
        raise
    except TrainingError:
        progress.close("")
        raise
    finally:
        writer.close()
    if stop.signal:
        progress.close(f"stopped by {stop.signal} at step {step}, checkpoint saved; {hint}")
        raise KeyboardInterrupt
    progress.close(f"done: {step} steps, run folder {out_dir}")
    return out_dir


def _reset(model):
    for tracker in model.metrics:
        tracker.reset_state()


def _check_finite(values: dict, step: int, saved: int):
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        terms = [name for name in bad if "loss" not in name] or bad  # name a term, not the total it spoils
        raise TrainingError(f"non-finite loss at step {step}: term '{terms[0]}' is {values[terms[0]]} (non-finite: "
                            f"{', '.join(bad)}); {_unsaved(saved)}")


def _unsaved(saved: int) -> str:
    where = f"the last good checkpoint is step {saved}" if saved else "no checkpoint was saved"
    return f"stopped without saving, {where} (try a lower train.learning_rate)"


def _finite_weights(model) -> bool:
    return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in model.trainable_variables]))


def _latest_checkpoint(folder: Path):
    """The prefix the `checkpoint` index names (None before the first save); an InputError if its files are gone."""
    state = tf.train.get_checkpoint_state(str(folder))
    if state is None or not state.model_checkpoint_path:
        return None
    prefix = state.model_checkpoint_path
    if not tf.io.gfile.exists(prefix + ".index"):
        raise InputError(f"{folder}: the checkpoint index names {Path(prefix).name}, but its files are missing")
    return prefix


def _discard_after(run_dir: Path, step: int):
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


class StopRequests:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM only sets `signal` (its name), so that the training loop
    stops between two steps and saves a consistent checkpoint; a second Ctrl-C raises KeyboardInterrupt at once.

    Python runs the handler between bytecodes, so a signal that arrives during a step (a tf.function call) is
    seen when the step returns. Handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        return False

    def _handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = self.signal or signal.Signals(number).name


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


class Progress:
    """One status line: step, loss terms, ETA. Redrawn in place on a terminal, a line per log elsewhere."""

    SHOWN = ("loss", "diffusion", "consistency", "prior", "smoothness", "val_loss")

    def __init__(self, total: int = 0, start: int = 0, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.drawn = False  # a status line is open on the terminal
        self.begin(total, start)

    def begin(self, total: int, start: int = 0):
        """Start timing (ETA) from here: the first step after `start`, of `total`."""
        self.total, self.start = total, start
        self.began = time.monotonic()

    def message(self, text: str):
        """A line of its own (what is trained, a skipped image), not overwritten by the status line."""
        self._end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, step: int, values: dict):
        elapsed = time.monotonic() - self.began
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else 0.0
        width = 20
        filled = int(width * step / self.total)
        bar = "#" * filled + "." * (width - filled)
        terms = " ".join(f"{k} {values[k]:.4g}" for k in self.SHOWN if k in values)
        line = f"step {step}/{self.total} [{bar}] {terms} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, message: str):
        """End the status line; then `message` on a line of its own (nothing if empty)."""
        if message:
            self.message(message)
        else:
            self._end_line()
            self.stream.flush()

    def _end_line(self):
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# === Previews ===


def write_preview(path: Path, sampler: Sampler, config, batch):
    """condition | sample | truth | std | schedule for the first example of `batch`, with the EMA weights."""
    y, x = batch
    with ema_weights(sampler.model):
        out = sampler(y[:1], steps=config.sampler.steps, samples=2, seed=0, method=config.sampler.method)
    panels = [y[0, ..., 0].numpy(), out["mean"][0, ..., 0].numpy(), x[0, ..., 0].numpy(),
              out["std"][0, ..., 0].numpy(), out["schedule"][0, ..., 0].numpy()]
    io.write_png(path, preview_strip(panels))


def preview_strip(panels, gap: int = 2) -> np.ndarray:
    """Grayscale panels side by side, each min-max scaled to 0..255, separated by white gaps."""
    height = max(p.shape[0] for p in panels)
    tiles = []
    for panel in panels:
        low, high = float(np.min(panel)), float(np.max(panel))
        scaled = (panel - low) / (high - low) if high > low else np.zeros_like(panel)
        tile = np.full((height, panel.shape[1]), 255, np.uint8)
        tile[: panel.shape[0]] = np.round(scaled * 255).astype(np.uint8)
        tiles += [tile, np.full((height, gap), 255, np.uint8)]
    return np.concatenate(tiles[:-1], axis=1)
