"""Data consistency (cvdm_tf.physics.consistency): the range-null space step against its defining properties, and
QPI's refinement of samples against what the measurement does and does not determine."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.data.phantoms import cell_phantoms
from cvdm_tf.errors import InputError
from cvdm_tf.physics.consistency import project
from cvdm_tf.tasks.qpi import DataConfig, QPITask


def _low_pass(size, cutoff):
    k = np.fft.fftfreq(size)
    return (np.hypot(k[:, None], k[None, :]) < cutoff).astype(np.float64)


def test_one_step_with_a_projector_fixes_the_range_and_keeps_the_null_space(rng):
    # A = A+ = an ideal low-pass (a projector). One step must give A x1 = y exactly and leave what A cannot see,
    # the high frequencies, as they were: checked with NumPy's FFT, not with the step's own formula.
    mask = _low_pass(32, 0.15)
    a = lambda v: tf.math.real(tf.signal.ifft2d(tf.signal.fft2d(tf.cast(v, tf.complex128)) * mask))  # noqa: E731
    x, truth = rng.normal(size=(3, 32, 32)), rng.normal(size=(32, 32))
    y = a(truth)
    x1 = project(tf.constant(x), y, a, a, steps=1).numpy()
    spectrum = lambda v: np.fft.fft2(v)  # noqa: E731
    np.testing.assert_allclose(spectrum(x1) * mask, np.broadcast_to(spectrum(truth) * mask, x1.shape), atol=1e-9)
    np.testing.assert_allclose(spectrum(x1) * (1 - mask), spectrum(x) * (1 - mask), atol=1e-9)
    assert project(x, y, a, a, steps=0) is x


def _refiner(**options):
    return QPITask(DataConfig(**{"data_consistency": 1, **options}))


def _wave(size, period_px, amplitude):
    xx = np.arange(size)[None, :].repeat(size, 0)
    return (amplitude * np.sin(2 * np.pi * xx / period_px)).astype(np.float32)


def test_qpi_refinement_removes_what_a_clean_pair_contradicts():
    # Noise-free: every sample is pulled onto the measurement; a 0.2 rad ripple the pair does not show goes.
    task = _refiner()
    truth = cell_phantoms(1, 64, seed=3, peak=3.0)[0]
    pair = task.measure(tf.constant(truth)).numpy()
    samples = np.stack([truth + _wave(64, 16, 0.2), truth - _wave(64, 16, 0.2)])[..., None]
    refined = np.asarray(task.refine(samples, pair))[..., 0]
    errors = [np.abs(s - s.mean() - (truth - truth.mean())).mean() for s in refined]
    assert max(errors) < 0.01, errors  # from 0.127 rad
    assert np.abs(refined[0] - refined[1]).mean() < 0.01  # the two samples now agree


def test_qpi_refinement_keeps_what_a_noisy_pair_leaves_open():
    # With the paper's noise the TIE weight damps the lowest frequencies: the data do not fix them, so a ripple
    # of one image period is the model's to keep, while a fine one is still corrected.
    task = _refiner()
    truth = cell_phantoms(1, 64, seed=3, peak=3.0)[0]
    noisy = QPITask(DataConfig(noise="paper", noise_max=0.2))
    pair = noisy.add_noise(noisy.measure(tf.constant(truth)), tf.constant([0, 7], tf.int64), noise="paper").numpy()
    assert float(noisy.noise_level(pair[None])[0]) > 0.05
    coarse, fine = _wave(64, 64, 0.3), _wave(64, 16, 0.3)
    refined = np.asarray(task.refine(np.stack([truth + coarse, truth + fine])[..., None], pair))[..., 0]
    kept = [np.sum((r - truth) * w) / np.sum(w * w) for r, w in zip(refined, (coarse, fine))]
    assert kept[0] > 0.9, kept  # the coarse ripple survives (measured 0.997)
    assert abs(kept[1]) < 0.5, kept  # the fine one is mostly removed (measured 0.34 kept)


def test_refinement_is_off_at_zero_steps_and_checked():
    task = QPITask(DataConfig())
    assert not task.refines
    samples = np.zeros((2, 8, 8, 1), np.float32)
    assert task.refine(samples, np.ones((8, 8, 2), np.float32)) is samples
    assert dataclasses.replace(DataConfig(), data_consistency=2).data_consistency == 2
    with pytest.raises(InputError, match="data_consistency"):
        DataConfig(data_consistency=-1)
    with pytest.raises(InputError, match="consistency_weight"):
        DataConfig(consistency_weight=0.0)


def test_frame_refinement_corrects_the_interior_and_leaves_what_a_camera_frame_cannot_fix():
    # A camera frame: the centre 64 px of a field twice as wide, simulated whole. Its pair fixes laplacian(phi)
    # inside the frame, not a tilt across it (laplacian = 0). A sample = truth + a tilt + a ripple in the middle:
    # the frame step must remove the ripple and keep the tilt (the sample's business); the periodic step, whose
    # forward model wraps the tilt into a jump at the edges, cannot tell the two apart.
    field = cell_phantoms(1, 128, seed=11, peak=2.5)[0]
    task = _refiner(boundary="camera", camera_crop=64)
    case = task.simulate_case("frame", field, "none", (0, 0))
    truth, pair = case.truth, case.measurement
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    tilt = 0.01 * (xx - 31.5)  # 0.32 rad across the frame
    ripple = (0.2 * np.sin(2 * np.pi * xx / 12) * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 200)).astype(np.float32)
    sample = (truth + tilt + ripple)[None, ..., None]

    def parts(refined):
        error = refined[0, ..., 0] - truth
        error -= error.mean()
        kept_tilt = np.sum(error * (tilt - tilt.mean())) / np.sum((tilt - tilt.mean()) ** 2)
        return kept_tilt, np.abs(error - kept_tilt * (tilt - tilt.mean())).mean()

    tilt_kept, rest = parts(np.asarray(task.refine(sample, pair)))
    assert tilt_kept > 0.9, tilt_kept  # measured 0.99
    assert rest < 0.4 * np.abs(ripple - ripple.mean()).mean(), rest  # the ripple mostly gone
    periodic_kept, _ = parts(np.asarray(_refiner(boundary="periodic").refine(sample, pair)))
    assert periodic_kept < 0.7, periodic_kept
