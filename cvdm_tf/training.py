"""The training loop around `train_step`: validate and load everything, open the run folder, step, log, save.

    train(config, out_dir)      a new run; `resume=True` continues the run in out_dir exactly
    1. `_prepare`: config, the task's training banks, the model and optimizer, the checkpoint to resume, the
       tf.data pipelines and a preview batch, all before anything is written (bad input leaves nothing);
    2. `_open_folder`: config.toml, the checkpoint manager, metrics.csv and TensorBoard (runs.py owns the layout);
    3. `_loop`: compiled `train_step`s; every `log_every` the running means and a validation pass are logged;
       every `checkpoint_every` a checkpoint; every `preview_every` a preview. A non-finite loss stops the run
       naming the step and the term, without saving; Ctrl-C / SIGTERM save at the current step first.
Under a tf.distribute strategy (`cvdm_tf.distribute`) the same loop runs on every worker; only the chief writes.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import keras
import tensorflow as tf

from cvdm_tf import io
from cvdm_tf.config import Config, dump_config
from cvdm_tf.data.pipeline import make_dataset
from cvdm_tf.distribute import (WORKER_ERRORS, check_batch, distribute_dataset, finish, is_chief, is_multiworker,
                                make_strategy, step_functions)
from cvdm_tf.errors import InputError
from cvdm_tf.previews import write_preview
from cvdm_tf.progress import Progress
from cvdm_tf.runs import (RESUMABLE, MetricsLog, build_for_checkpoint, discard_after, latest_checkpoint, resolve_config,
                          run_config)
from cvdm_tf.sampler import sampler_for, schedule_diagnostics
from cvdm_tf.tasks import make_task


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or weights); the message names the step and the term."""


def train(config: Config, out_dir, resume: bool = False, progress=None, strategy="default") -> Path:
    """Train a CVDM into `out_dir`, or with `resume` continue the run there from its last checkpoint.

    Everything is validated and loaded before `out_dir` is touched, so bad input leaves nothing behind. With
    `resume` the run's own config.toml is used; only `RESUMABLE` train fields are taken from `config`.
    `train.steps` is the total, so a resumed run ends at the same step as an uninterrupted one, with the same
    weights: the optimizer state, the step counter, the random stream and the data position are restored.

    Args:
        config: Config. What to train (with `resume`: the new train.steps / checkpoint_every).
        out_dir: str or Path. The run folder: absent or empty, or the run to continue with `resume`.
        resume: bool. Continue the run in `out_dir`.
        progress: Progress or None (a new one on stderr; silent on a worker that is not the chief).
        strategy: str (`cvdm_tf.distribute.STRATEGIES`) or tf.distribute.Strategy. Where the steps run.

    Returns:
        Path: `out_dir`.

    Raises:
        InputError: bad input; nothing was written.
        TrainingError: a non-finite loss; no checkpoint was written after the last good step.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after saving a checkpoint at the current step.
    """
    out_dir = Path(out_dir)
    strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy
    progress = progress or (Progress() if is_chief(strategy) else Progress(stream=open(os.devnull, "w")))
    try:
        run = _prepare(config, out_dir, resume, progress, strategy)
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


def _prepare(config: Config, out_dir: Path, resume: bool, progress, strategy) -> SimpleNamespace:
    """Validate and load everything (config, images, model, checkpoint, datasets); nothing on disk changes."""
    chief = is_chief(strategy)
    if resume:
        config = run_config(out_dir).replace(train={name: getattr(config.train, name) for name in RESUMABLE})
    elif chief and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: run folder exists and is not empty (use --resume to continue it)")
    config = resolve_config(config)
    task = make_task(config.task, config.data)
    tc = config.train
    check_batch(strategy, tc.batch_size)
    size = config.data.image_size
    train_bank, val_bank, described = task.training_banks(tc.validation_fraction, tc.seed, task.field_size(size),
                                                          warn=progress.message)
    # Unseeded Keras initializers draw from the global generators: without this, two runs with the same
    # train.seed start from different weights. (Sets Python's, NumPy's and TensorFlow's global seeds.)
    keras.utils.set_random_seed(tc.seed)
    with strategy.scope():  # variables mirrored on every replica
        model, optimizer, checkpoint = build_for_checkpoint(config)
        latest = latest_checkpoint(out_dir / "checkpoints") if resume else None
        if latest:
            try:
                checkpoint.read(latest).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError) as err:
                raise InputError(f"{latest}: cannot restore this checkpoint ({str(err).splitlines()[0]})") from None
    start = int(optimizer.iterations.numpy())
    # Batches (y, x, seeds), each replica its own part of every global batch (`cvdm_tf.distribute`).
    data = distribute_dataset(strategy, lambda shard, split: make_dataset(
        task, train_bank, size, tc.batch_size, tc.seed, start=start * tc.batch_size, augment=config.data.augment,
        example_seeds=True, shard=shard, split=split))
    validation = preview_data = None
    if val_bank is not None:
        validation = distribute_dataset(strategy, lambda shard, split: make_dataset(
            task, val_bank, size, tc.batch_size, tc.seed + 1, augment=False, example_seeds=True, shard=shard,
            split=split).take(tc.validation_batches * split).cache())
        preview_data = make_dataset(task, val_bank, size, tc.batch_size, tc.seed + 1, augment=False)
    else:
        preview_data = make_dataset(task, train_bank, size, tc.batch_size, tc.seed, start=start * tc.batch_size,
                                    augment=config.data.augment)
    # Drawing the preview batch runs the pipeline once, before anything is written.
    preview_batch = next(iter(preview_data))
    return SimpleNamespace(config=config, model=model, checkpoint=checkpoint, start=start, data=data,
                           validation=validation, preview_batch=preview_batch, described=described,
                           strategy=strategy, chief=chief)


def _open_folder(run: SimpleNamespace, out_dir: Path, resume: bool) -> SimpleNamespace:
    """Create (or, resuming, tidy) the run folder: config.toml, checkpoint manager, metrics.csv, TensorBoard.
    A folder this creates is removed again if this fails. A worker that is not the chief writes nothing there:
    its checkpoints go to a temporary folder (`temp`, deleted at the end), its logs nowhere."""
    if not run.chief:
        temp = tempfile.mkdtemp(prefix="cvdm-worker-")
        return SimpleNamespace(manager=tf.train.CheckpointManager(run.checkpoint, temp, max_to_keep=1), log=None,
                               writer=tf.summary.create_noop_writer(), temp=temp)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(out_dir / "config.toml", dump_config(run.config))
        if resume:
            discard_after(out_dir, run.start)
        manager = tf.train.CheckpointManager(run.checkpoint, str(out_dir / "checkpoints"),
                                             max_to_keep=run.config.train.keep_checkpoints)
        log = MetricsLog(out_dir / "metrics.csv", run.start)
        writer = tf.summary.create_file_writer(str(out_dir / "logs"))
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return SimpleNamespace(manager=manager, log=log, writer=writer, temp=None)


def _loop(run: SimpleNamespace, files: SimpleNamespace, out_dir: Path, progress) -> Path:
    """The training loop. A signal only sets a flag; the loop stops between steps, so what it saves is consistent."""
    config, model, tc = run.config, run.model, run.config.train
    validation, writer = run.validation, files.writer
    preview_sampler = sampler_for(model, config.sampler)
    step_fn, test_fn = step_functions(model, run.strategy, tc.jit_compile)
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
                    if run.chief and not getattr(model, "is_regression", False):  # two conditions: cheap, enough
                        values.update(schedule_diagnostics(model, run.preview_batch[0][:2], config.sampler.steps))
                    _check_finite(values, step, saved)
                    if files.log is not None:
                        files.log.append(step, values)
                    with writer.as_default(step=step):
                        for name, value in values.items():
                            tf.summary.scalar(name, value)
                    progress.update(step, values)
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    save()
                if run.chief and (step % tc.preview_every == 0 or step == tc.steps):
                    write_preview(out_dir / "previews" / f"step{step:07d}.png", preview_sampler, config,
                                  run.preview_batch)
            if stop.signal and step > saved:
                save()
            if not stop.signal:  # a worker that stopped alone must not wait for the others
                finish(run.strategy)
    except KeyboardInterrupt:  # a second Ctrl-C, which stops at once
        last = f"last checkpoint at step {saved}" if saved else "no checkpoint yet"
        progress.close(f"interrupted at step {step} ({last}); {hint}")
        raise
    except TrainingError:
        progress.close("")
        raise
    except WORKER_ERRORS as err:
        if not is_multiworker(run.strategy):
            raise
        last = f"the last checkpoint is step {saved}" if saved else "no checkpoint was saved"
        progress.close("")
        raise TrainingError(f"lost a worker of the cluster at step {step + 1} ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0][:200]}); {last}; restart every worker with: "
                            f"cvdm-tf train --resume --out {out_dir} --strategy multiworker") from None
    finally:
        writer.close()
        if files.temp:
            shutil.rmtree(files.temp, ignore_errors=True)
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
