"""`cvdm-tf`: train, simulate, infer, export, eval. Each command parses its arguments and calls one library function.

TensorFlow is imported lazily and quietly: only when a command first needs it, after its inputs are checked, with
its start-up logging and CUDA probes sent to /dev/null unless --verbose. So `cvdm-tf --help` and a typo in a path
answer at once, and a run's output is for people. A user error (`InputError`) prints
one line `error: ...` and exits with code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import os
import sys
from datetime import datetime
from pathlib import Path

import click

from cvdm_tf.errors import InputError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up logs bypass Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """An import hook: whenever `tensorflow` is first imported, it loads (and probes its devices) with fd 2 silenced,
    and its Python logger set to errors only. Removed once used."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            with _stderr_silenced():
                execute(module)
                module.config.list_physical_devices()
            module.get_logger().setLevel("ERROR")

        spec.loader.exec_module = exec_module
        return spec


def start_tensorflow(verbose: bool):
    """Arrange for TensorFlow to start quietly, whenever a command first imports it, unless `verbose`."""
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
    import warnings

    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", module="tensorflow")


def command(function):
    """TensorFlow quiet unless --verbose; user errors as one line and exit code 2."""

    @functools.wraps(function)
    def wrapper(*args, verbose=False, **kwargs):
        try:
            start_tensorflow(verbose)
            return function(*args, **kwargs)
        except InputError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)

    return click.option("--verbose", is_flag=True, help="Show TensorFlow's own logging.")(wrapper)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cvdm-tf")
def main():
    """Conditional Variational Diffusion Models for inverse problems in imaging."""


def _task_names():
    from cvdm_tf.tasks import TASK_NAMES

    return TASK_NAMES


MODEL_HELP = "Run folder of `cvdm-tf train`, or a built-in model builtin:NAME (see `cvdm-tf models`)."

TASK = click.option("--task", default="qpi", show_default=True,
                    help=f"The inverse problem ({', '.join(_task_names())}).")

SAMPLER_PRECISION = click.option(
    "--precision", type=click.Choice(["auto", "float32", "bfloat16"]),
    help="The denoiser's compute dtype while sampling (default: the run's sampler.precision, normally auto: "
         "bfloat16 where the hardware has it, e.g. CPUs with AVX512_BF16/AMX, float32 elsewhere).")


def task_options(command_name: str, baselines: bool = True):
    """The options every task declares for `command_name` (`cvdm_tf.tasks.base.Option`), as click options (but
    the baselines' where `baselines` is False); the command receives them as one dict `task_values` of the values
    given (None where not given)."""
    from cvdm_tf.tasks import TASK_OPTIONS

    declared = {}
    for name, options in TASK_OPTIONS.items():
        for option in options:
            if command_name in option.commands and (baselines or not option.baseline):
                declared.setdefault(option.flag, (option, []))[1].append(name)

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            values = {flag: kwargs.pop(_param(flag)) for flag in declared}
            return function(*args, task_values=values, **kwargs)

        for flag, (option, owners) in sorted(declared.items(), reverse=True):
            wrapper = click.option(flag, _param(flag), type=option.type,
                                   help=f"{option.help} [{', '.join(owners)}]")(wrapper)
        return wrapper

    return decorate


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def apply_task_options(task_name: str, data, values: dict, command_name: str):
    """(data config with the given task options applied, {baseline: {keyword: value}}, {reader keyword: value},
    {physics key: value}); an InputError for an option of another task. Physics (a measurement's wavelength,
    pixel size, defocus) stays apart from the data config: `infer` lets a file's metadata fill what is not given,
    and every command but `simulate` checks it against the model's training range."""
    import dataclasses

    from cvdm_tf.tasks import TASK_OPTIONS

    own = {option.flag: option for option in TASK_OPTIONS[task_name] if command_name in option.commands}
    changes, baseline_options, reader_options, physics = {}, {}, {}, {}
    for flag, value in values.items():
        if value is None:
            continue
        if flag not in own:
            raise InputError(f"{flag}: not an option of task {task_name}")
        option = own[flag]
        if option.baseline:
            baseline_options.setdefault(option.baseline, {})[option.key] = value
        elif option.reader:
            reader_options[option.key] = value
        elif option.physics:
            physics[option.key] = value
        else:
            changes[option.key] = value
    try:
        return dataclasses.replace(data, **changes), baseline_options, reader_options, physics
    except InputError as err:
        raise InputError(f"option: {err}") from None


# === train ===


@main.command()
@TASK
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default: configs/TASK.toml).")
@click.option("--data", help="Training images: a folder (recursive), an image or a .npy/.npz stack. Default: embedded.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/TASK-TIMESTAMP).")
@click.option("--steps", type=int, help="Total training steps (also when resuming).")
@click.option("--batch-size", type=int)
@click.option("--image-size", type=int, help="Training crop size in pixels.")
@click.option("--schedule", type=click.Choice(["learned", "learned-global", "linear", "cosine"]))
@click.option("--kind", type=click.Choice(["cvdm", "regression"]),
              help="cvdm, or regression: the same backbone trained with L1 (the CARE-like baseline).")
@click.option("--seed", type=int)
@click.option("--checkpoint-every", type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--precision", type=click.Choice(["float32", "mixed_float16", "mixed_bfloat16"]),
              help="The U-Nets' compute dtype (train.precision; the schedule and loss stay float32).")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]), default="default",
              show_default=True, help="One device; every local GPU (or logical CPU); or the cluster of TF_CONFIG "
              "(docs/distributed.md). train.batch_size is the global batch.")
@click.option("--worker-timeout", type=click.FloatRange(min=2), default=60, show_default=True,
              help="multiworker: a worker that died fails the run within about this many seconds.")
@command
def train(task, config_path, data, out, steps, batch_size, image_size, schedule, kind, seed, checkpoint_every,
          resume, precision, strategy, worker_timeout):
    """Train a CVDM. With no option: the QPI task on the images embedded in scikit-image; `--task biosr`:
    super-resolution microscopy on simulated fluorescence structures (or `--data` a BioSR folder).

    Ctrl-C (or SIGTERM) saves a checkpoint and stops with exit code 130; `--resume --out RUN` continues the run
    from its last checkpoint to --steps in total (default: the run's own train.steps).
    """
    from cvdm_tf.config import default_config, load_config
    from cvdm_tf.runs import run_config
    from cvdm_tf.tasks import TASK_NAMES

    if task not in TASK_NAMES:
        raise InputError(f"--task: unknown task {task!r} (known: {', '.join(TASK_NAMES)})")
    # --task defaults to qpi: only a --task the user gave must agree with the config or run.
    task_given = click.get_current_context().get_parameter_source("task") is not click.core.ParameterSource.DEFAULT
    if resume:
        if not out:
            raise InputError("--resume needs --out RUN_FOLDER (the run to continue)")
        fixed = [name for name, value in (("--config", config_path), ("--data", data), ("--batch-size", batch_size),
                                          ("--image-size", image_size), ("--schedule", schedule), ("--kind", kind),
                                          ("--seed", seed), ("--precision", precision))
                 if value is not None]
        if fixed:
            raise InputError(f"{', '.join(fixed)}: a resumed run keeps its own config.toml (only --steps and "
                             f"--checkpoint-every may change)")
    if resume:
        config = run_config(out)
        if task_given and config.task != task:
            raise InputError(f"{out}: the run is for task {config.task!r}, not {task!r}")
    else:
        config = load_config(config_path) if config_path else default_config(task)
        if task_given and config.task != task:
            raise InputError(f"{config_path}: config is for task {config.task!r}, not {task!r} (drop --task)")
    changes = {
        "train": {k: v for k, v in dict(steps=steps, batch_size=batch_size, seed=seed, precision=precision,
                                        checkpoint_every=checkpoint_every).items() if v is not None},
        "data": {k: v for k, v in dict(source=data, image_size=image_size).items() if v is not None},
        "model": {k: v for k, v in dict(schedule=schedule, kind=kind).items() if v is not None},
        # A regression has one output: that is its point estimate, whatever the task's CVDM estimates with.
        "sampler": {"estimate": "mean"} if kind == "regression" else {},
    }
    try:
        config = config.replace(**changes)
    except InputError as err:
        raise InputError(f"option: {err}") from None
    out = Path(out) if out else Path("runs") / f"{config.task}-{datetime.now():%Y%m%d-%H%M%S}"
    # The options and the config are checked (bad ones get their one line above); say what starts before the data,
    # the model and the first step's compilation (about 10 s before the first progress line).
    click.echo(f"{'resuming' if resume else 'starting'} {config.task} training in {out}: loading the data and "
               "building the model ...", err=True)
    from cvdm_tf.distribute import make_strategy
    from cvdm_tf.training import TrainingError, train as run_training

    try:
        run_training(config, out, resume=resume, strategy=make_strategy(strategy, worker_timeout))
    except TrainingError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


# === simulate ===


@main.command()
@TASK
@click.option("--input", "input_path", required=True, type=click.Path(), help="Ground-truth image(s): file or folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--noise", default="none", show_default=True, help="The task's noise model (qpi: none, paper, "
              "poisson; biosr: none, poisson-gaussian).")
@click.option("--seed", type=int, default=0, show_default=True)
@task_options("simulate")
@command
def simulate(task, input_path, out, noise, seed, task_values):
    """Make measurements from ground truth (QPI: OUT/NAME.tif, the raw pair I(-dz), I(+dz), and OUT/NAME_phase.tif
    in radians; BioSR: OUT/wf/NAME.tif, the widefield image, and OUT/gt/NAME.tif, the SIM-like target on the 2x
    grid; sr4x: OUT/lr/NAME.png, the 4x-downsampled image, and OUT/hr/NAME.png)."""
    from cvdm_tf.tasks import get_task

    cls = get_task(task)
    data, _, _, physics = apply_task_options(task, cls.DataConfig(), task_values, "simulate")
    if noise not in cls.noise_models:
        raise InputError(f"--noise: {noise!r} is not a noise model of task {task} ({', '.join(cls.noise_models)})")
    count = cls(data).with_physics(**physics).simulate_files(input_path, out, noise=noise, seed=seed)
    click.echo(f"wrote {count} simulated measurement(s) to {out}")


# === distil ===


@main.command()
@click.option("--model", "run_dir", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--steps", type=click.IntRange(min=1), required=True, help="N: the student's DDIM sampling steps.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The student's run folder (absent or empty; written whole or not at all).")
@click.option("--teacher-steps", type=click.IntRange(min=2),
              help="The first round's teacher steps, N times a power of two; each round halves them "
                   "(default: 4 N, two rounds).")
@click.option("--iterations", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training iterations per round.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Pairs per iteration (default: the run's).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), help="The student's default K (default: the run's).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@command
def distil(run_dir, steps, out, teacher_steps, iterations, batch_size, learning_rate, samples, seed):
    """Distil a trained model into a student that samples in N deterministic steps (progressive distillation,
    Salimans and Ho 2022; the teacher's per-pixel schedule kept): a run folder for --model like any other."""
    from cvdm_tf.distil import distil as run

    run(run_dir, out, steps, teacher_steps=teacher_steps, iterations=iterations, batch_size=batch_size,
        learning_rate=learning_rate, samples=samples, seed=seed)


# === infer ===


@main.command()
@click.option("--model", "run_dir", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="Raw measurement(s): an image/stack file or a folder (recursive), or an OME-Zarr field "
                   "(FIELD.zarr, read and written block by block). QPI: the H x W x 2 pair.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--samples", type=click.IntRange(min=1),
              help="K samples per image, the std map is over these (default: the run's sampler.samples).")
@click.option("--steps", type=click.IntRange(min=1), help="T sampling steps (default: the run's sampler.steps).")
@click.option("--sampler", "method", type=click.Choice(["ddpm", "ddim"]),
              help="Sampler (default: the run's sampler.method).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per batch.")
@click.option("--tile", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images larger than this are processed in overlapping, blended tiles.")
@click.option("--median", is_flag=True,
              help="Also write NAME_median: the per-pixel median of the K samples, the estimate of least expected "
                   "absolute error (the mean is that of least squared error).")
@click.option("--mean-network", is_flag=True,
              help="Also write NAME_mean_network: the model's mean network's estimate, without samples: E[x|y], or "
                   "the median where it was trained with L1 (models with a mean network: builtin:biosr, "
                   "builtin:sr4x).")
@SAMPLER_PRECISION
@click.option("--task", help="The run's task (checked against the run; default: the run's).")
@task_options("infer")
@command
def infer(run_dir, input_path, out, samples, steps, method, seed, batch_size, tile, median, mean_network, precision,
          task, task_values):
    """Reconstruct: NAME_mean.tif, NAME_std.tif (uncertainty), NAME_schedule.tif, NAME_preview.png per image, and
    the run's point estimate where it is not the mean (NAME_median or NAME_mean_network; `cvdm-tf models`)."""
    from cvdm_tf.inference import infer_paths
    from cvdm_tf.runs import model_config

    reader_options, data, physics = {}, None, {}
    if task or any(value is not None for value in task_values.values()):
        config = model_config(run_dir)
        if task and config.task != task:
            raise InputError(f"{run_dir}: the model was trained for task {config.task!r}, not {task!r}")
        data, _, reader_options, physics = apply_task_options(config.task, config.data, task_values, "infer")
    report = infer_paths(run_dir, input_path, out, samples=samples, steps=steps, method=method, seed=seed,
                         batch_size=batch_size, tile=tile, reader_options=reader_options, precision=precision,
                         data=data, physics=physics, median=median, mean_network=mean_network)
    if report.failed:  # each already reported as `error: PATH: problem`; the good files are complete
        sys.exit(EXIT_USER_ERROR)


# === reference-phase ===


@main.command(name="reference-phase")
@click.option("--input", "input_path", required=True, type=click.Path(), help="Through-focus z-stack (TIFF, OME-TIFF).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--z-step", type=float, help="Plane spacing in micrometres (default: from the file's metadata).")
@click.option("--order", type=click.IntRange(min=1), help="Polynomial order of the fit of I(z) (default: "
              "min(planes - 1, 6)).")
@click.option("--planes", type=click.IntRange(min=2), help="Use only the M planes nearest to focus.")
@click.option("--focus-plane", type=int, help="In-focus plane (default: minimum contrast).")
@click.option("--wavelength", type=float, default=0.521, show_default=True, help="Wavelength in micrometres.")
@click.option("--pixel-size", type=float, default=0.21, show_default=True, help="Pixel size in micrometres.")
@command
def reference_phase(input_path, out, z_step, order, planes, focus_plane, wavelength, pixel_size):
    """The multi-plane reference phase of a z-stack (the paper's QPI ground truth for real samples): a per-pixel
    polynomial fit of I(z), its derivative at focus, then US-TIE. Writes NAME_phase.tif (radians, zero-mean)
    and NAME_fit_residual.tif."""
    from cvdm_tf.physics.through_focus import reference_phase_file

    phase_path, residual_path, used = reference_phase_file(
        input_path, out, z_step_um=z_step, order=order, planes=planes, focus=focus_plane,
        wavelength_um=wavelength, pixel_size_um=pixel_size)
    click.echo(f"{used}; wrote {phase_path} and {residual_path}")


# === models ===


@main.command()
@click.argument("name", required=False)
def models(name):
    """List the built-in models (`--model builtin:NAME`) with their cards: how each was trained, on what, and what
    it scores on its task's held-out benchmark."""
    from cvdm_tf import builtin

    try:
        chosen = [name] if name else builtin.names()
        click.echo("\n\n".join(builtin.describe(n) for n in chosen) or "no built-in models in this install")
    except InputError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USER_ERROR)


# === export ===


@main.command()
@click.option("--model", "run_dir", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--out", required=True, type=click.Path(),
              help="SavedModel folder to create (absent or empty); with --format bioimageio, the NAME.zip to write.")
@click.option("--format", "format_", type=click.Choice(["savedmodel", "bioimageio"]), default="savedmodel",
              show_default=True,
              help="savedmodel: the measurement's physics as inputs; bioimageio: a BioImage Model Zoo package "
                   "(spec 0.5) for deepImageJ, ilastik, napari and bioimageio.core, the run's physics fixed "
                   "(needs pip install 'cvdm-tf[bioimageio]').")
@click.option("--steps", type=int, help="Sampling steps T of serving_default (default: the run's sampler.steps).")
@click.option("--samples", type=int, help="Samples K of serving_default (default: the run's sampler.samples).")
@click.option("--test-input", type=click.Path(exists=True, dir_okay=False),
              help="bioimageio: the measurement of the package's test tensors (default for builtin: models: their "
                   "first held-out measurement).")
@command
def export(run_dir, out, format_, steps, samples, test_input):
    """Export a run as a SavedModel (raw measurement in, physical units out, the whole sampler inside) or as a
    bioimage.io model package."""
    if format_ == "bioimageio":
        from cvdm_tf.bioimageio import export_package

        export_package(run_dir, out, steps=steps, samples=samples, test_input=test_input)
        click.echo(f"wrote the bioimage.io package {out} (test it: bioimageio test {out})")
        return
    from cvdm_tf.export import export_run

    export_run(run_dir, out, steps=steps, samples=samples)
    click.echo(f"wrote SavedModel to {out} (signatures: serving_default, sample)")


# === eval ===


@main.command(name="eval")
@click.option("--model", "run_dir", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--task", help="The run's task (checked against the run; default: the run's).")
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="What to evaluate on: QPI ground-truth phase images; BioSR a BioSR folder, wf/ + gt/ TIFF "
                   "pairs, or structure images to simulate from.")
@click.option("--noise", help="The task's noise model for simulated measurements (default: the run's).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), help="T sampling steps (default: the run's).")
@click.option("--sampler", "method", type=click.Choice(["ddpm", "ddim"]), help="Default: the run's.")
@click.option("--baseline", "baselines", multiple=True,
              help="Baselines to compare with (repeatable; default: all of the task's: qpi tie; biosr bicubic, "
                   "richardson-lucy).")
@click.option("--compare", "compare_runs", multiple=True, type=click.Path(),
              help="Another run of the task to score alike (repeatable): e.g. the regression U-Net of "
                   "`cvdm-tf train --kind regression`, or a CDDPM of `--schedule linear`.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@SAMPLER_PRECISION
@click.option("--out", "report_path", required=True, type=click.Path(dir_okay=False), help="JSON report to write.")
@task_options("eval")
@command
def eval_(run_dir, task, data_path, noise, samples, steps, method, baselines, compare_runs, seed, precision,
          report_path, task_values):
    """Reconstruct measurements with the model and the task's baselines, score them all (MAE, PSNR, SSIM,
    MS-SSIM and the task's own metrics)."""
    import dataclasses

    from cvdm_tf import io, recalibration
    from cvdm_tf.evaluation import evaluate, markdown_table
    from cvdm_tf.runs import load_run
    from cvdm_tf.tasks import make_task

    config, task_object, model = load_run(run_dir)
    if task and config.task != task:
        raise InputError(f"{run_dir}: the model was trained for task {config.task!r}, not {task!r}")
    if precision:
        config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, precision=precision))
    data, baseline_options, reader_options, physics = apply_task_options(config.task, config.data, task_values,
                                                                         "eval")
    if data != config.data or physics:
        task_object = make_task(config.task, data).with_physics(**physics)
        config = dataclasses.replace(config, data=task_object.data)
    compare = {}
    for path in compare_runs:
        other_config, _, other_model = load_run(path)
        compare[Path(path).name] = (other_config, other_model)
    fit = recalibration.find(recalibration.of_run(run_dir), config.sampler, samples, steps, method)
    report = evaluate(config, task_object, model, data_path, noise=noise, samples=samples, steps=steps,
                      method=method, seed=seed, baselines=baselines or None, baseline_options=baseline_options,
                      compare=compare, reader_options=reader_options, recalibration=fit,
                      progress=lambda i, n, name: click.echo(f"[{i}/{n}] {name}", err=True))
    io.write_json(report_path, report)
    click.echo(markdown_table(report, task_object.score_columns))
    from cvdm_tf.previews import ESTIMATE_TITLES

    click.echo(f"\ncvdm: the run's point estimate, its {ESTIMATE_TITLES[report['estimate']]} "
               f"(K = {report['samples']} samples of T = {report['steps']} {report['sampler']} steps; std maps and "
               "calibration from the samples)")
    if fit is not None:
        click.echo(f"recalibrated: the {fit.label()} (`cvdm-tf calibrate`)")
    click.echo(f"per-image metrics in {report_path}")


# === calibrate ===


@main.command()
@click.option("--model", "run_dir", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Validation data, as `cvdm-tf eval --data` reads it (never the images you will judge it on).")
@click.option("--samples", type=click.IntRange(min=2), help="K (default: the run's sampler.samples).")
@click.option("--steps", type=click.IntRange(min=1), help="T sampling steps (default: the run's).")
@click.option("--sampler", "method", type=click.Choice(["ddpm", "ddim"]), help="Default: the run's.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder of the recalibration.json to write (default: the run folder; required for builtin:NAME).")
@task_options("eval", baselines=False)
@command
def calibrate(run_dir, data_path, samples, steps, method, seed, out_dir, task_values):
    """Fit the std map's recalibration on validation data: one factor per level of the image, so the truth is
    within 1 and 2 std as often as for a calibrated sampler (Student-t targets). infer then also writes
    NAME_std_recalibrated.tif at this K, T and sampler. The task's data options are eval's (QPI camera frames:
    --camera-crop N)."""
    from cvdm_tf import builtin
    from cvdm_tf.runs import model_config

    config = model_config(run_dir)
    if not Path(data_path).exists():
        raise InputError(f"{data_path}: no such file or folder")
    if out_dir is None and builtin.is_builtin(run_dir):
        raise InputError(f"{run_dir}: a built-in model's folder is not yours to write; pass --out FOLDER")
    if config.model.kind == "regression":
        raise InputError(f"{run_dir}: a regression run has one output and no std map to recalibrate")
    samples = samples or config.sampler.samples
    if samples < 2:
        raise InputError(f"--samples {samples}: a std map needs K >= 2")
    if config.sampler.antithetic and samples % 2:
        raise InputError(f"--samples {samples}: this model samples in antithetic pairs (sampler.antithetic), so K "
                         "must be even")
    from cvdm_tf import recalibration
    from cvdm_tf.runs import load_run

    out = Path(out_dir or run_dir)
    recalibration.load(out)  # a damaged recalibration.json there is refused now, not after the sampling
    data, _, reader_options, physics = apply_task_options(config.task, config.data, task_values, "eval")
    config, task, model = load_run(run_dir)
    if data != config.data or physics:  # e.g. QPI camera frames: --camera-crop N --boundary camera
        from cvdm_tf.tasks import make_task

        task = make_task(config.task, data).with_physics(**physics)
    fit = recalibration.fit_run(config, task, model, data_path, samples, steps or config.sampler.steps,
                                method or config.sampler.method, seed=seed, reader_options=reader_options,
                                progress=lambda i, n, name: click.echo(f"[{i}/{n}] {name}", err=True))
    out.mkdir(parents=True, exist_ok=True)
    path = recalibration.save(fit, out)
    click.echo(f"wrote {path}: {fit.label()}")
    click.echo("factor per level bin (dark to bright): " + " ".join(f"{a:.2f}" for a in fit.scales))


if __name__ == "__main__":  # pragma: no cover
    main()
