"""Immerkaer's blind noise estimate, the noise-adaptive TIE weight built on it, and the QPI condition channels
that use them."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.data.phantoms import cell_phantoms
from cvdm_tf.errors import InputError
from cvdm_tf.physics.noise_estimate import immerkaer_sigma
from cvdm_tf.physics.tie import noise_adaptive_regularization, tie_fft, tune_regularization
from cvdm_tf.tasks.qpi import NOISE_GAIN, DataConfig, QPITask


def _offset_free_mae(estimate, truth):
    a = np.asarray(estimate, np.float64)
    b = np.asarray(truth, np.float64)
    centred = (a - a.mean(axis=(-2, -1), keepdims=True)) - (b - b.mean(axis=(-2, -1), keepdims=True))
    return float(np.mean(np.abs(centred)))


@pytest.fixture(scope="module")
def phantom_pairs():
    """4 cell phantoms of 64 px (seed 5: neither the training nor the benchmark phantoms; peak 1.5 rad keeps 64 px
    cells in TIE's linear regime) and their noise-free pairs."""
    task = QPITask(DataConfig(tie_channel=True))
    truths = np.stack(cell_phantoms(4, 64, seed=5, peak=1.5)).astype(np.float32)
    return task, truths, task.measure(tf.constant(truths)).numpy()


def test_white_noise_gives_its_standard_deviation(rng):
    # On pure Gaussian noise the estimator is unbiased: E|N * noise| = sqrt(2 / pi) * 6 sigma.
    for sigma in (0.01, 0.3):
        noise = sigma * rng.standard_normal((2, 256, 256, 2)).astype(np.float32)
        assert np.allclose(immerkaer_sigma(noise).numpy(), sigma, rtol=0.02)


def test_structure_the_kernel_annihilates_reads_as_no_noise():
    # N = l l^T with l = (1, -2, 1): it removes any f(y) + g(x) + a x y, however sharp f and g are.
    y, x = np.mgrid[0:40, 0:50].astype(np.float64)
    image = np.sign(np.sin(y / 3.0)) + np.exp(-((x - 20) / 2.0) ** 2) + 0.01 * x * y
    assert float(immerkaer_sigma(image[..., None])) < 1e-5


def test_batch_axes_and_channels():
    rng = np.random.default_rng(1)
    sigmas = np.array([0.1, 0.2, 0.4], np.float32)
    images = rng.standard_normal((3, 2, 32, 32, 2)).astype(np.float32) * sigmas[:, None, None, None, None]
    sigma = immerkaer_sigma(images).numpy()
    assert sigma.shape == (3, 2)
    assert np.allclose(sigma, sigmas[:, None], rtol=0.1)
    # Each image on its own gives the same number.
    assert np.isclose(float(immerkaer_sigma(images[2, 1])), sigma[2, 1], rtol=1e-5)


def test_reads_the_paper_noise_of_cell_pairs(phantom_pairs):
    # Defocused intensities of cells are smooth: the estimate on I / mean(I) is the relative noise lam / (1 + lam),
    # with a small upward bias from the cells' edges that matters only at low noise (measured up to 10% at 0.02).
    task, _, clean = phantom_pairs
    for index, (lam, rtol) in enumerate(((0.02, 0.15), (0.1, 0.05), (0.2, 0.05))):
        seed = tf.random.experimental.stateless_fold_in(tf.constant([3, index], tf.int64), 1)
        noisy = clean + lam + lam * tf.random.stateless_normal(clean.shape, seed=seed).numpy()
        relative = noisy / noisy.mean(axis=(1, 2, 3), keepdims=True)
        assert np.allclose(immerkaer_sigma(relative).numpy(), lam / (1 + lam), rtol=rtol)
    assert float(np.max(immerkaer_sigma(clean / clean.mean()))) < 0.005


def test_adaptive_weight_grows_with_noise_and_follows_the_source_noise():
    sigma = np.array([0.0, 0.01, 0.05, 0.1, 0.2], np.float32)
    weight = noise_adaptive_regularization(sigma).numpy()
    assert weight[0] == 0 and np.all(np.diff(weight) > 0)
    # The rule depends on sigma_f = k dx^2 sigma / (sqrt 2 dz): twice the defocus at twice the noise is the same.
    assert np.allclose(noise_adaptive_regularization(2 * sigma, defocus_um=2.0).numpy(), weight, rtol=1e-5)
    # A longer wavelength is a smaller k, so less noise in the source.
    assert noise_adaptive_regularization(0.1, wavelength_um=1.0) < noise_adaptive_regularization(0.1)


def test_adaptive_weight_is_near_each_images_oracle(phantom_pairs):
    # Noise-free it keeps TIE nearly exact; with noise it is within 15% of the MAE of each image's oracle weight and
    # beats the fixed default weight (1e-6) at both ends.
    _, truths, clean = phantom_pairs
    for lam in (0.0, 0.15):
        seed = tf.constant([11, int(lam * 100)], tf.int64)
        noisy = clean + lam + lam * tf.random.stateless_normal(clean.shape, seed=seed).numpy()
        weights = noise_adaptive_regularization(immerkaer_sigma(noisy / noisy.mean(axis=(1, 2, 3), keepdims=True)))
        adaptive = _offset_free_mae(tie_fft(noisy, regularization=weights[:, None, None]).numpy(), truths)
        fixed = _offset_free_mae(tie_fft(noisy, regularization=1e-6).numpy(), truths)
        oracle = np.mean([min(tune_regularization(noisy[i:i + 1], truths[i:i + 1])[1].values()) for i in range(4)])
        assert adaptive < fixed
        assert adaptive < 1.15 * oracle + 2e-3, (lam, adaptive, oracle)
        if lam == 0:
            assert adaptive < 0.01


def test_condition_channels_order_and_per_image_weights(phantom_pairs):
    task, _, clean = phantom_pairs
    noisy = clean + 0.1 + 0.1 * np.random.default_rng(2).standard_normal(clean.shape).astype(np.float32)
    pairs = np.concatenate([clean[:2], noisy[2:]])
    both = QPITask(DataConfig(tie_channel=True, tie_weight="noise", noise_channel=True))
    assert both.condition_channels == 4
    y = both.normalize_condition(tf.constant(pairs)).numpy()
    assert y.shape == (4, 64, 64, 4)
    # Channel 2 is the noise level, constant over each image; the TIE estimate stays last (model.mean = condition).
    sigma = immerkaer_sigma(pairs / pairs.mean(axis=(1, 2, 3), keepdims=True)).numpy()
    assert np.allclose(y[..., 2], NOISE_GAIN * sigma[:, None, None], rtol=1e-3)
    expected = tie_fft(pairs, regularization=noise_adaptive_regularization(sigma)[:, None, None]).numpy()
    assert np.allclose(np.asarray(both.denormalize_target(y[..., 3:]))[..., 0], expected, atol=1e-5)
    # Each image gets its own weight: an image conditioned alone equals itself in the batch.
    for index in (0, 3):
        alone = both.normalize_condition(tf.constant(pairs[index])).numpy()
        assert np.allclose(alone, y[index], atol=1e-5)
    # The noise channel alone, without TIE.
    assert QPITask(DataConfig(noise_channel=True)).condition_channels == 3


def test_tie_noise_baseline_needs_no_truth(phantom_pairs):
    task, truths, clean = phantom_pairs
    baselines = task.baselines()
    method = baselines["tie-noise"]()
    assert method.tune([]) == {} and method.name == "tie-noise"
    # The noise each pair shows sets its weight: noisy pairs beat the fixed default weight, clean ones stay as good.
    noisy = clean + 0.15 + 0.15 * np.random.default_rng(4).standard_normal(clean.shape).astype(np.float32)
    fixed = baselines["tie"](regularization=1e-6)
    for pairs, margin in ((noisy, 1.0), (clean, 1.05)):
        adaptive = _offset_free_mae(np.stack([method(pair) for pair in pairs]), truths)
        assert adaptive < margin * _offset_free_mae(fixed(pairs), truths)


def test_unknown_tie_weight_is_an_input_error():
    with pytest.raises(InputError, match="data.tie_weight"):
        DataConfig(tie_weight="auto")
