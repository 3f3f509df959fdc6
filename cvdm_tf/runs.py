"""The run folder and the training loop around `CVDM.train_step`.

A run folder holds everything needed to continue, reuse or inspect a training run:

    config.toml      the resolved config (enough to rebuild the model)
    checkpoints/     tf.train.Checkpoint files: weights, optimizer state with the EMA weights, the step counter
                     and the model's random stream; written to temporary files and committed by an atomic
                     rename of the `checkpoint` index, the last `keep_checkpoints` kept
    metrics.csv      `step`, then every loss term (and `val_*` terms), one row per log interval
    logs/            TensorBoard scalars
    previews/        PNG: condition | sample | truth | std | schedule, every `preview_every` steps

`cvdm-tf infer/export/eval --model RUN` read it with `load_run`.
"""

from __future__ import annotations

import csv
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from cvdm_tf import io
from cvdm_tf.config import Config, dump_config, load_config
from cvdm_tf.data import sources
from cvdm_tf.data.pipeline import load_ground_truth, make_dataset
from cvdm_tf.data.tasks import make_task
from cvdm_tf.errors import InputError
from cvdm_tf.model import build_model, ema_weights, make_optimizer
from cvdm_tf.sampler import Sampler


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the step and the term."""


def resolve_config(config: Config) -> Config:
    """Fill in what the task decides (channel counts), so the saved config rebuilds the same model."""
    task = make_task(config.task, config.data)
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
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, rng=model.seed_generator.state.value)
    return model, optimizer, checkpoint


# === Training ===


def train(config: Config, out_dir, resume: bool = False, progress=None) -> Path:
    """Train a CVDM into `out_dir` (or continue the run there with `resume`). `--steps` is the total."""
    out_dir = Path(out_dir)
    if resume:
        saved = load_config(out_dir / "config.toml") if (out_dir / "config.toml").is_file() else None
        if saved is None:
            raise InputError(f"{out_dir}: nothing to resume (no config.toml)")
        # The model and data must be the run's own; the length of training may change.
        config = saved.replace(train={"steps": config.train.steps})
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: run folder exists and is not empty (use --resume to continue it)")
    config = resolve_config(config)
    task = make_task(config.task, config.data)
    tc = config.train

    images = load_ground_truth(config.data, min_size=config.data.image_size)
    train_items, val_items = sources.split_by_image(images, tc.validation_fraction, tc.seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(out_dir / "config.toml", dump_config(config))
    model, optimizer, checkpoint = _build(config)
    manager = tf.train.CheckpointManager(checkpoint, str(out_dir / "checkpoints"), max_to_keep=tc.keep_checkpoints)
    if resume and manager.latest_checkpoint:
        checkpoint.read(manager.latest_checkpoint).assert_existing_objects_matched()
    start = int(optimizer.iterations.numpy())

    data = make_dataset(task, [image for _, image in train_items], config.data, tc.batch_size, tc.seed,
                        start=start * tc.batch_size)
    validation = None
    if val_items:
        validation = make_dataset(task, [image for _, image in val_items], config.data, tc.batch_size,
                                  tc.seed + 1, augment=False).take(tc.validation_batches).cache()
    log = MetricsLog(out_dir / "metrics.csv", start)
    writer = tf.summary.create_file_writer(str(out_dir / "logs"))
    preview_batch = next(iter(validation if validation is not None else data))
    preview_sampler = Sampler(model)
    step_fn = tf.function(model.train_step, reduce_retracing=True)
    test_fn = tf.function(model.test_step, reduce_retracing=True)
    progress = progress or Progress(tc.steps, start)

    def save(step):
        manager.save(checkpoint_number=step)

    interrupted = []
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: interrupted.append("SIGTERM"))
    step = start
    try:
        iterator = iter(data)
        while step < tc.steps:
            logs = step_fn(next(iterator))
            step += 1
            if step % tc.log_every == 0 or step == tc.steps:
                values = {name: float(value) for name, value in logs.items()}
                _check_finite(values, step)
                for tracker in model.metrics:
                    tracker.reset_state()
                if validation is not None:
                    for batch in validation:
                        val = test_fn(batch)
                    values.update({f"val_{k}": float(v) for k, v in val.items()})
                    for tracker in model.metrics:
                        tracker.reset_state()
                log.append(step, values)
                with writer.as_default(step=step):
                    for name, value in values.items():
                        tf.summary.scalar(name, value)
                progress.update(step, values)
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save(step)
            if step % tc.preview_every == 0 or step == tc.steps:
                write_preview(out_dir / "previews" / f"step{step:07d}.png", preview_sampler, config, preview_batch)
            if interrupted:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: keep what was learned since the last checkpoint, then stop cleanly.
        if step > start and int(optimizer.iterations.numpy()) == step:
            save(step)
        progress.close(f"interrupted at step {step}; checkpoint saved, continue with --resume --out {out_dir}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        writer.flush()
    progress.close(f"done: {step} steps, run folder {out_dir}")
    return out_dir


def _check_finite(values: dict, step: int):
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise TrainingError(
            f"non-finite loss at step {step} in term '{bad[0]}' ({', '.join(bad)}); the last good checkpoint is "
            f"kept (try a lower train.learning_rate)"
        )


class MetricsLog:
    """metrics.csv: a `step` column then the loss terms. On resume, rows after the restored step are dropped
    (they are recomputed identically), everything before is kept."""

    def __init__(self, path: Path, start: int):
        self.path = path
        self.rows = []
        if path.is_file() and start > 0:
            with path.open() as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= start]

    def append(self, step: int, values: dict):
        self.rows.append({"step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        columns = ["step"] + [k for k in self.rows[-1] if k != "step"]
        lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in self.rows]
        io.write_text(self.path, "\n".join(lines) + "\n")


class Progress:
    """One status line: step, loss terms, ETA. Redrawn in place on a terminal, a line per log elsewhere."""

    SHOWN = ("loss", "diffusion", "consistency", "prior", "smoothness", "val_loss")

    def __init__(self, total: int, start: int = 0, stream=None):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.began = time.monotonic()
        self.tty = self.stream.isatty()

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
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, message: str):
        self.stream.write(("\n" if self.tty else "") + message + "\n")
        self.stream.flush()


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
