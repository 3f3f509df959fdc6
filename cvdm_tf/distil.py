"""`cvdm-tf distil`: progressive distillation (Salimans and Ho 2022) of a trained CVDM into a student that samples
in a few deterministic (DDIM) steps, with the teacher's per-pixel schedule unchanged.

    paper                 code          meaning
    N                     steps         the student's sampling steps, after the last round
    2N                    teacher       a round's teacher steps; each round halves them
    alpha_t, sigma_t      a, s          sqrt(gamma(t, y)), sqrt(1 - gamma(t, y)): per pixel (CVDM's learned
                                        schedule, the teacher's, never trained here)
    z_t                   z             a x + s eps; x is the diffusion's target (the residual around the mean)
    x_tilde               target        the x that one DDIM step t -> t'' must predict to land where two teacher
                                        DDIM steps t -> t' -> t'' land: (z'' - (s'' / s) z) / (a'' - (s'' / s) a)
    w(lambda)             weight        max(SNR, 1) on the x error ("truncated SNR"), SNR = a^2 / s^2

A round: the student starts as a copy of its teacher and learns on training pairs of the teacher's task (its
`data` config and training images): t = i / N for a random step i of the student's grid, z_t from the pair and
fresh noise, two teacher steps (with the sampler's clip of x_hat) give z'' at t'' = (i - 1) / N, and the student
learns to reach it in one (loss: w (x_hat - x_tilde)^2). Only the denoiser learns: the schedule (tau, the time
network) and the mean network stay the teacher's, so gamma(t, y), the schedule map and the mean the diffusion works
around keep their meaning. The student of one round teaches the next, until N steps.

The student is a run folder like any other: config.toml (sampler.method = "ddim", sampler.steps = N) and its
weights as `cvdm_tf.builtin.save` writes them, plus distil.json (the teacher, the rounds, their losses and CPU
time). `cvdm-tf infer`, `eval` and `export` take it as `--model`.

Reference: T. Salimans, J. Ho. Progressive Distillation for Fast Sampling of Diffusion Models. ICLR 2022.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from cvdm_tf.errors import InputError

LOG_EVERY = 50  # iterations between progress lines


def teacher_steps_of_rounds(steps: int, teacher_steps: int) -> list[int]:
    """Each round's teacher steps, teacher_steps, teacher_steps / 2, ..., 2 N; an InputError unless teacher_steps
    is N times a power of two, at least 2 N."""
    if not (isinstance(steps, int) and steps >= 1):
        raise InputError(f"--steps: must be a positive integer, got {steps!r}")
    ratio = teacher_steps // steps if isinstance(teacher_steps, int) and teacher_steps > 0 else 0
    if ratio < 2 or ratio * steps != teacher_steps or ratio & (ratio - 1):
        raise InputError(f"--teacher-steps {teacher_steps}: must be --steps ({steps}) times a power of two, at "
                         "least twice it (each round halves the steps)")
    rounds = []
    while teacher_steps > steps:
        rounds.append(teacher_steps)
        teacher_steps //= 2
    return rounds


def signal_and_noise(log_gamma):
    """(a, s) = (sqrt(gamma), sqrt(1 - gamma)) from log gamma, with the sampler's floors."""
    import tensorflow as tf

    from cvdm_tf.sampler import LOG_GBAR_MIN

    return (tf.exp(0.5 * tf.maximum(log_gamma, LOG_GBAR_MIN)),
            tf.sqrt(tf.maximum(-tf.math.expm1(log_gamma), 0.0)))


def ddim_step(model, z, y, log_gamma, log_gamma_next, clip: float):
    """One deterministic step z_t -> z_t' (the sampler's DDIM update, sigma = 0)."""
    from cvdm_tf.sampler import denoise

    x_hat, eps_hat = denoise(model, z, y, log_gamma, clip)
    a_next, s_next = signal_and_noise(log_gamma_next)
    return a_next * x_hat + s_next * eps_hat


def one_step_target(z, z_end, log_gamma, log_gamma_end):
    """x_tilde: the x_hat with which one DDIM step from z (at gamma) lands on z_end (at gamma_end), per pixel.
    At gamma_end = 1 (t'' = 0) it is z_end itself."""
    import tensorflow as tf

    a, s = signal_and_noise(log_gamma)
    a_end, s_end = signal_and_noise(log_gamma_end)
    ratio = s_end / tf.maximum(s, 1e-12)
    # a'' - (s'' / s) a > 0 wherever the schedule decreases (SNR(t'') > SNR(t)); the floor guards a flat one.
    return (z_end - ratio * z) / tf.maximum(a_end - ratio * a, 1e-6)


def distillation_loss(student, teacher, y, x, steps, seed, clip: float):
    """The loss of a batch (y, x) for a student of `steps` steps taught by two steps of `teacher` (module docstring).
    `seed`: [2] int32, the batch's stateless key."""
    import tensorflow as tf

    x0, _ = teacher.residual_target(x, y)  # the teacher's mean network: the student's is the same, frozen
    tau = teacher.schedule.tau(y)
    batch = tf.shape(x0)[0]
    i = tf.random.stateless_uniform([batch, 1], seed, 1, steps + 1, dtype=tf.int32)
    n = tf.cast(steps, tf.float32)
    t, t_mid, t_end = ((tf.cast(i, tf.float32) - shift) / n for shift in (0.0, 0.5, 1.0))
    log_gamma = teacher.schedule.log_gamma(t, tau)
    log_gamma_mid = teacher.schedule.log_gamma(t_mid, tau)
    at_zero = tf.reshape(i, [-1, 1, 1, 1]) == 1
    log_gamma_end = tf.where(at_zero, 0.0, teacher.schedule.log_gamma(t_end, tau))  # gamma(0) = 1 exactly
    eps = tf.random.stateless_normal(tf.shape(x0), seed + 1)
    a, s = signal_and_noise(log_gamma)
    z = a * x0 + s * eps
    z_mid = ddim_step(teacher, z, y, log_gamma, log_gamma_mid, clip)
    z_end = ddim_step(teacher, z_mid, y, log_gamma_mid, log_gamma_end, clip)
    target = one_step_target(z, z_end, log_gamma, log_gamma_end)
    if clip > 0:
        target = tf.clip_by_value(target, -clip, clip)
    target = tf.stop_gradient(target)
    weight = tf.maximum(tf.square(a) / tf.maximum(tf.square(s), 1e-12), 1.0)
    eps_student = student((z, y, tf.exp(log_gamma)))
    x_student = (z - s * eps_student) / a
    return tf.reduce_mean(weight * tf.square(x_student - target))


def _train_step(student, teacher, optimizer, variables, steps: int, clip: float):
    """One compiled iteration of a round: the loss of a batch, and Adam's update of the student's denoiser."""
    import tensorflow as tf

    @tf.function
    def train_step(y, x, key):
        with tf.GradientTape() as tape:
            loss = distillation_loss(student, teacher, y, x, steps, key, clip)
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return train_step


def distil(spec, out_dir, steps: int, teacher_steps: int | None = None, iterations: int = 1000,
           batch_size: int | None = None, learning_rate: float = 1e-4, samples: int | None = None, seed: int = 0,
           progress=None) -> Path:
    """Distil the run `spec` (a run folder or `builtin:NAME`) into a student of `steps` DDIM steps in `out_dir`.

    Args:
        steps: int. N, the student's steps.
        teacher_steps: int or None. The first round's teacher steps, N times a power of two (default 4 N: two
            rounds).
        iterations: int. Training iterations per round.
        batch_size: int or None. Pairs per iteration (default: the run's train.batch_size).
        learning_rate: float. Adam's, decayed linearly to 0 over each round.
        samples: int or None. The student's default K (default: the run's sampler.samples).
        seed: int. The pairs, t and the noise.
        progress: `cvdm_tf.progress.Progress` or None (a new one on stderr).

    Returns:
        Path of the student's run folder (written whole, or not at all).
    """
    from cvdm_tf.progress import Progress
    from cvdm_tf.runs import model_config

    out_dir = Path(out_dir)
    rounds = teacher_steps_of_rounds(steps, 4 * steps if teacher_steps is None else teacher_steps)
    for option, value in (("--iterations", iterations), ("--batch-size", batch_size), ("--samples", samples)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise InputError(f"{option}: must be a positive integer, got {value!r}")
    if not learning_rate > 0:
        raise InputError(f"--learning-rate: must be > 0, got {learning_rate!r}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not empty")
    config = model_config(spec)  # before TensorFlow: a wrong path fails at once
    if config.model.kind != "cvdm":
        raise InputError(f"{spec}: a {config.model.kind} run has no diffusion to distil")
    samples = samples or config.sampler.samples
    if config.sampler.antithetic and samples % 2:
        raise InputError(f"--samples {samples}: this model samples in antithetic pairs, so K must be even")
    # The grid the student learned: t_i = i / N, gbar_i = gamma(t_i, y).
    student_config = config.replace(sampler={"method": "ddim", "steps": steps, "samples": samples,
                                             "grid": "uniform", "discretisation": "exact"})

    import keras
    import tensorflow as tf

    from cvdm_tf import builtin
    from cvdm_tf.data.pipeline import make_dataset
    from cvdm_tf.model import build_model
    from cvdm_tf.runs import load_run

    progress = progress or Progress()
    config, task, teacher = load_run(spec)
    tc = config.train
    batch_size = batch_size or tc.batch_size
    size = config.data.image_size
    train_bank, _, described = task.training_banks(tc.validation_fraction, tc.seed, task.field_size(size),
                                                   warn=progress.message)
    progress.message(f"distilling {spec} ({' -> '.join(map(str, rounds + [steps]))} DDIM steps, {iterations} "
                     f"iterations a round) on {described}")
    keras.utils.set_random_seed(seed)
    pairs = iter(make_dataset(task, train_bank, size, batch_size, seed, augment=config.data.augment))
    clip = float(config.model.x_range)
    record = {"teacher": str(spec), "steps": steps, "iterations": iterations, "batch_size": batch_size,
              "learning_rate": learning_rate, "seed": seed, "rounds": []}
    began = time.process_time()
    for number, teacher_steps_now in enumerate(rounds):
        student = build_model(config)
        student.set_weights(teacher.get_weights())
        student_steps = teacher_steps_now // 2
        variables = student.denoiser.trainable_variables
        optimizer = keras.optimizers.Adam(
            keras.optimizers.schedules.PolynomialDecay(learning_rate, iterations, 0.0),
            global_clipnorm=tc.gradient_clip or None)

        train_step = _train_step(student, teacher, optimizer, variables, student_steps, clip)

        progress.message(f"round {number + 1}/{len(rounds)}: {teacher_steps_now} -> {student_steps} steps")
        progress.begin(iterations)
        losses = []
        for iteration in range(1, iterations + 1):
            y, x = next(pairs)
            key = tf.constant([seed, number * iterations + iteration], tf.int32)
            losses.append(float(train_step(y, x, key)))
            if not math.isfinite(losses[-1]):
                raise InputError(f"round {number + 1}, iteration {iteration}: the distillation loss is not finite "
                                 "(try a smaller --learning-rate)")
            if iteration % LOG_EVERY == 0 or iteration == iterations:
                progress.update(iteration, {"loss": sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:])})
        window = max(1, min(LOG_EVERY, iterations // 4))
        record["rounds"].append({"teacher_steps": teacher_steps_now, "student_steps": student_steps,
                                 "loss_first": sum(losses[:window]) / window,
                                 "loss_last": sum(losses[-window:]) / window})
        teacher = student
    record["cpu_seconds"] = round(time.process_time() - began, 1)
    # Written whole or not at all: a hidden folder, renamed once complete.
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        builtin.save(student_config, teacher, partial)
        (partial / "distil.json").write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    progress.close(f"wrote the {steps}-step student to {out_dir} ({record['cpu_seconds']:.0f} CPU-s)")
    return out_dir
