"""`cvdm-tf distil`: the one-step target against closed forms, a round's update, and the student as a run folder."""

import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cvdm_tf.cli.main import main
from cvdm_tf.distil import ddim_step, distillation_loss, one_step_target, teacher_steps_of_rounds
from cvdm_tf.errors import InputError


class PointMassModel:
    """The exact denoiser of data that is always x = c: eps_hat = (z - sqrt(gamma) c) / sqrt(1 - gamma)."""

    def __init__(self, c):
        self.c = tf.constant(c, tf.float32)

    def __call__(self, inputs):
        z, _, gamma = inputs
        return (z - tf.sqrt(gamma) * self.c) / tf.sqrt(1.0 - gamma)


def _log_gammas(rng, shape):
    """Per-pixel log gamma at t > t' > t'' (gamma increasing as t decreases), as a learned schedule gives."""
    log_gamma = -rng.uniform(0.5, 6.0, shape)
    log_gamma_mid = log_gamma * rng.uniform(0.3, 0.7, shape)
    log_gamma_end = log_gamma_mid * rng.uniform(0.1, 0.6, shape)
    return (tf.constant(v, tf.float32) for v in (log_gamma, log_gamma_mid, log_gamma_end))


def test_one_ddim_step_with_the_target_lands_where_the_two_teacher_steps_land():
    """The defining property of x_tilde, for any z and z'' per pixel: a'' x_tilde + s'' (z - a x_tilde) / s = z''."""
    rng = np.random.default_rng(0)
    shape = (2, 5, 6, 1)
    log_gamma, _, log_gamma_end = _log_gammas(rng, shape)
    z, z_end = (tf.constant(rng.normal(size=shape), tf.float32) for _ in range(2))
    target = one_step_target(z, z_end, log_gamma, log_gamma_end)
    a, s = np.exp(0.5 * log_gamma.numpy()), np.sqrt(1 - np.exp(log_gamma.numpy()))
    a_end, s_end = np.exp(0.5 * log_gamma_end.numpy()), np.sqrt(1 - np.exp(log_gamma_end.numpy()))
    landed = a_end * target.numpy() + s_end * (z.numpy() - a * target.numpy()) / s
    np.testing.assert_allclose(landed, z_end.numpy(), atol=2e-4)
    # At t'' = 0 (gamma'' = 1) the step lands on x itself: the target is z''.
    np.testing.assert_allclose(one_step_target(z, z_end, log_gamma, tf.zeros(shape)).numpy(), z_end.numpy(),
                               atol=1e-6)


def test_for_a_point_mass_the_teacher_steps_stay_on_the_data_and_the_target_is_it():
    """With the exact denoiser of data x = c, DDIM keeps x_hat = c at every step, so z' = a' c + s' eps and the
    target of the two teacher steps is c itself, per pixel, for any per-pixel schedule."""
    rng = np.random.default_rng(1)
    shape = (3, 4, 4, 1)
    c = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    model = PointMassModel(c)
    log_gamma, log_gamma_mid, log_gamma_end = _log_gammas(rng, shape)
    eps = rng.normal(size=shape).astype(np.float32)
    a, s = np.exp(0.5 * log_gamma.numpy()), np.sqrt(1 - np.exp(log_gamma.numpy()))
    z = tf.constant(a * c + s * eps)
    z_mid = ddim_step(model, z, None, log_gamma, log_gamma_mid, clip=4.0)
    expected_mid = np.exp(0.5 * log_gamma_mid.numpy()) * c + np.sqrt(1 - np.exp(log_gamma_mid.numpy())) * eps
    np.testing.assert_allclose(z_mid.numpy(), expected_mid, atol=1e-4)
    z_end = ddim_step(model, z_mid, None, log_gamma_mid, log_gamma_end, clip=4.0)
    np.testing.assert_allclose(one_step_target(z, z_end, log_gamma, log_gamma_end).numpy(), c, atol=2e-3)


@pytest.mark.parametrize("steps, teacher, rounds", [(2, 8, [8, 4]), (1, 2, [2]), (3, 12, [12, 6])])
def test_rounds_halve_the_teacher_steps(steps, teacher, rounds):
    assert teacher_steps_of_rounds(steps, teacher) == rounds


@pytest.mark.parametrize("steps, teacher", [(3, 8), (2, 2), (2, 6), (2, 12)])
def test_teacher_steps_must_be_n_times_a_power_of_two(steps, teacher):
    with pytest.raises(InputError, match=f"--teacher-steps {teacher}: must be --steps"):
        teacher_steps_of_rounds(steps, teacher)


def test_a_round_lowers_the_loss_and_trains_only_the_denoiser(tiny_run):
    """Iterations on one batch lower the distillation loss of a student copied from its teacher (which does not
    reach two teacher steps in one), and move only the denoiser's weights."""
    import keras

    from cvdm_tf.distil import _train_step
    from cvdm_tf.model import build_model
    from cvdm_tf.runs import load_run

    config, task, teacher = load_run(tiny_run)
    student = build_model(config)
    student.set_weights(teacher.get_weights())
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(4, 16, 16, 1)) * 0.5, tf.float32)
    y = tf.constant(rng.normal(size=(4, 16, 16, config.model.condition_channels)), tf.float32)
    key = tf.constant([3, 4], tf.int32)
    before = float(distillation_loss(student, teacher, y, x, 2, key, clip=4.0))
    step = _train_step(student, teacher, keras.optimizers.Adam(1e-2), student.denoiser.trainable_variables, 2, 4.0)
    for _ in range(30):
        step(y, x, key)
    after = float(distillation_loss(student, teacher, y, x, 2, key, clip=4.0))
    assert after < 0.3 * before, (before, after)  # measured: 17654 -> 1400
    for name in ("schedule", "denoiser"):
        same = all(np.array_equal(a, b) for a, b in zip(getattr(student, name).get_weights(),
                                                        getattr(teacher, name).get_weights()))
        assert same == (name == "schedule"), name


@pytest.mark.slow
def test_distil_writes_a_ddim_run_that_infer_takes(tiny_run, tmp_path):
    """The CLI end to end: a student of N DDIM steps with the teacher's schedule, its record, and `infer` with it;
    a wrong --teacher-steps answers in one line before anything is written."""
    from cvdm_tf import io
    from cvdm_tf.runs import load_run

    runner = CliRunner()
    bad = runner.invoke(main, ["distil", "--model", str(tiny_run), "--steps", "3", "--teacher-steps", "8",
                               "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--teacher-steps 8: must be --steps (3) times a power of two" in bad.stderr
    assert not (tmp_path / "bad").exists()
    result = runner.invoke(main, ["distil", "--model", str(tiny_run), "--steps", "1", "--teacher-steps", "4",
                                  "--iterations", "3", "--batch-size", "2", "--out", str(tmp_path / "student")])
    assert result.exit_code == 0, result.stderr
    assert "round 2/2: 2 -> 1 steps" in result.stderr
    config, _, student = load_run(tmp_path / "student")
    _, _, teacher = load_run(tiny_run)
    assert (config.sampler.method, config.sampler.steps) == ("ddim", 1)
    for a, b in zip(student.schedule.get_weights(), teacher.schedule.get_weights()):
        np.testing.assert_array_equal(a, b)
    record = json.loads((tmp_path / "student" / "distil.json").read_text())
    assert [r["teacher_steps"] for r in record["rounds"]] == [4, 2] and record["teacher"] == str(tiny_run)
    pair = np.stack([np.full((16, 16), 1.0), np.full((16, 16), 1.0)], axis=-1).astype(np.float32)
    io.write_tiff(tmp_path / "pair.tif", pair)
    inferred = runner.invoke(main, ["infer", "--model", str(tmp_path / "student"), "--input",
                                    str(tmp_path / "pair.tif"), "--out", str(tmp_path / "out")])
    assert inferred.exit_code == 0, inferred.stderr
    assert "T = 1 ddim steps" in inferred.stderr and (tmp_path / "out" / "pair_mean.tif").is_file()
