"""Metrics against independent implementations (hand formulas, scikit-image, tf.image) and known answers."""

import numpy as np
import pytest
import skimage.metrics
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cvdm_tf import metrics
from cvdm_tf.errors import InputError


def smooth_pair(rng, shape, noise=0.05):
    """A smooth image in [0, 1] and a noisy copy: realistic SSIM values, well away from 0 and 1."""
    sigma = [2.0, 2.0, 0.0][: len(shape)]
    a = ndimage.gaussian_filter(rng.random(shape), sigma)
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + noise * rng.standard_normal(shape), 0.0, 1.0)
    return a, b


def with_channels(image):
    return image if image.ndim == 3 else image[..., None]


def bandlimited(rng, size, cutoff):
    """White noise with a sharp circular low-pass at `cutoff` (fraction of Nyquist), unit variance."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    mask = 2.0 * np.hypot(fy, fx) < cutoff
    image = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * mask))
    return image / image.std()


def truncated_weights(shape):
    """The weights ms_ssim uses for an image of this shape (its documented small-image rule)."""
    weights = np.asarray(metrics.MS_SSIM_WEIGHTS[: metrics.ms_scales(shape)])
    return tuple(weights * sum(metrics.MS_SSIM_WEIGHTS) / weights.sum())


# === MAE, PSNR ===


def test_mae_hand_case():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert metrics.mae(a, np.ones((2, 2))) == pytest.approx(1.0)  # (1 + 0 + 1 + 2) / 4


def test_mae_and_psnr_match_formulas_and_skimage(rng):
    a, b = smooth_pair(rng, (32, 40, 3))
    assert metrics.mae(a, b) == pytest.approx(np.abs(a - b).mean(), rel=1e-12)
    mse = np.mean((a - b) ** 2)
    assert metrics.psnr(a, b, 1.0) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-12)
    assert metrics.psnr(a, b, 2.0) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-12)
    assert metrics.psnr(a, b, 1.0) == pytest.approx(skimage.metrics.peak_signal_noise_ratio(b, a, data_range=1.0))


def test_psnr_identical_is_inf(rng):
    a = rng.random((16, 16))
    assert metrics.psnr(a, a, 1.0) == float("inf")


def test_shape_mismatch_and_rank_are_rejected(rng):
    with pytest.raises(InputError):
        metrics.mae(rng.random((8, 8)), rng.random((8, 9)))
    with pytest.raises(InputError):
        metrics.mae(rng.random(8), rng.random(8))


def test_offset_free_removes_per_channel_means(rng):
    a = rng.random((8, 8, 2)) + np.array([3.0, -1.0])
    b = rng.random((8, 8, 2))
    a0, b0 = metrics.offset_free(a, b)
    np.testing.assert_allclose(a0.mean(axis=(0, 1)), 0.0, atol=1e-12)
    np.testing.assert_allclose(b0.mean(axis=(0, 1)), 0.0, atol=1e-12)
    # a constant phase offset no longer changes the error
    a1, b1 = metrics.offset_free(a + 5.0, b)
    assert metrics.mae(a1, b1) == pytest.approx(metrics.mae(a0, b0), rel=1e-12)


# === SSIM ===


@pytest.mark.parametrize("shape", [(48, 48), (40, 56, 3)])
def test_ssim_matches_skimage_and_tf(rng, shape):
    a, b = smooth_pair(rng, shape)
    value = metrics.ssim(a, b, 1.0)
    reference = skimage.metrics.structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1 if a.ndim == 3 else None,
    )
    assert value == pytest.approx(reference, abs=1e-12)
    tf_value = float(tf.image.ssim(with_channels(a), with_channels(b), max_val=1.0))
    assert value == pytest.approx(tf_value, abs=1e-4)
    assert 0.3 < value < 0.99  # a non-trivial case
    assert metrics.ssim(a, a, 1.0) == pytest.approx(1.0)


def test_ssim_rejects_images_smaller_than_the_window(rng):
    with pytest.raises(InputError):
        metrics.ssim(rng.random((10, 32)), rng.random((10, 32)), 1.0)


# === MS-SSIM ===


@pytest.mark.parametrize("shape", [(256, 256), (192, 192, 3), (201, 187, 2)])
def test_ms_ssim_matches_tf_on_five_scales(rng, shape):
    assert metrics.ms_scales(shape) == 5
    a, b = smooth_pair(rng, shape)
    value = metrics.ms_ssim(a, b, 1.0)
    reference = float(tf.image.ssim_multiscale(with_channels(a), with_channels(b), max_val=1.0))
    assert value == pytest.approx(reference, abs=1e-5)
    assert 0.3 < value < 0.99


@pytest.mark.parametrize(
    "side, scales",
    [(256, 5), (161, 5), (160, 4), (128, 4), (81, 4), (80, 3), (64, 3), (41, 3), (40, 2), (21, 2), (20, 1), (16, 1),
     (10, 0)],
)
def test_ms_scales(side, scales):
    assert metrics.ms_scales((side, side)) == scales
    assert metrics.ms_scales((side + 50, side, 3)) == scales  # the smaller side decides


@pytest.mark.parametrize("shape", [(64, 64), (100, 70), (128, 128, 2)])
def test_ms_ssim_small_images_match_tf_with_truncated_weights(rng, shape):
    a, b = smooth_pair(rng, shape)
    reference = tf.image.ssim_multiscale(
        with_channels(a), with_channels(b), max_val=1.0, power_factors=truncated_weights(shape)
    )
    assert metrics.ms_ssim(a, b, 1.0) == pytest.approx(float(reference), abs=1e-5)


def test_ms_ssim_single_scale_is_ssim(rng):
    a, b = smooth_pair(rng, (16, 16))
    ssim_value = metrics.ssim(a, b, 1.0)
    assert metrics.ms_ssim(a, b, 1.0) == pytest.approx(ssim_value ** sum(metrics.MS_SSIM_WEIGHTS), rel=1e-9)


@pytest.mark.parametrize("side", [16, 23, 32, 48, 64, 96, 128, 160])
def test_ms_ssim_small_images_identity_and_monotone_in_noise(rng, side):
    a, _ = smooth_pair(rng, (side, side))
    assert metrics.ms_ssim(a, a, 1.0) == pytest.approx(1.0, abs=1e-12)
    noise = rng.standard_normal(a.shape)
    scores = [metrics.ms_ssim(a, a + level * noise, 1.0) for level in (0.01, 0.03, 0.1, 0.3)]
    assert all(np.isfinite(scores))
    assert all(x > y for x, y in zip(scores, scores[1:])), scores


def test_ms_ssim_negative_structure_is_clamped_not_nan(rng):
    # an inverted image has cs < 0 at the finest scale: a fractional power of it would be NaN
    a, _ = smooth_pair(rng, (64, 64))
    b = 1.0 - a
    value = metrics.ms_ssim(a, b, 1.0)
    assert value == 0.0
    reference = tf.image.ssim_multiscale(a[..., None], b[..., None], 1.0, power_factors=truncated_weights(a.shape))
    assert float(reference) == 0.0


def test_ms_ssim_rejects_images_smaller_than_the_window(rng):
    with pytest.raises(InputError):
        metrics.ms_ssim(rng.random((10, 10)), rng.random((10, 10)), 1.0)


# === Decorrelation analysis ===


@pytest.mark.parametrize("cutoff", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_decorrelation_finds_the_band_limit(rng, cutoff, noise):
    image = bandlimited(rng, 256, cutoff)
    image = image + noise * rng.standard_normal(image.shape)
    k_c = metrics.decorrelation_cutoff(image)
    assert k_c == pytest.approx(cutoff, rel=0.1)
    resolution = metrics.decorrelation_resolution(image, pixel_size=30.0)
    assert resolution == pytest.approx(2 * 30.0 / cutoff, rel=0.1)
    assert resolution == pytest.approx(2 * 30.0 / k_c, rel=1e-12)


def test_decorrelation_blur_worsens_resolution(rng):
    sharp = rng.standard_normal((256, 256))
    noise = 0.01 * rng.standard_normal(sharp.shape)  # the same faint noise floor in every image
    resolutions = []
    for sigma in (0.0, 1.0, 2.0, 3.0):
        blurred = ndimage.gaussian_filter(sharp, sigma) if sigma else sharp
        resolutions.append(metrics.decorrelation_resolution(blurred / blurred.std() + noise, pixel_size=1.0))
    assert all(x < y for x, y in zip(resolutions, resolutions[1:])), resolutions


def test_decorrelation_white_noise_reaches_nyquist(rng):
    k_c = metrics.decorrelation_cutoff(rng.standard_normal((256, 256)))
    assert k_c >= 0.95
    assert metrics.decorrelation_resolution(rng.standard_normal((128, 128, 1)), pixel_size=1.0) <= 2.0 / 0.95


def test_decorrelation_is_scale_and_offset_invariant(rng):
    image = bandlimited(rng, 128, 0.5)
    assert metrics.decorrelation_cutoff(3.0 * image + 7.0) == pytest.approx(metrics.decorrelation_cutoff(image))


def test_decorrelation_input_checks(rng):
    with pytest.raises(InputError):
        metrics.decorrelation_cutoff(rng.random((32, 32, 3)))
    with pytest.raises(InputError):
        metrics.decorrelation_cutoff(rng.random((8, 32)))


# === Uncertainty quality ===


def test_radial_power_spectrum_is_parseval_and_a_ring_average(rng):
    # A cosine at 0.25 cycles / px (half of Nyquist) on a periodic grid: all its power in the ring at 0.5, and
    # the rings together hold what Parseval says the image holds (sum of squares, in the spatial domain).
    x = np.arange(128)
    wave = 3.0 * np.cos(2 * np.pi * 0.25 * x)[None, :] * np.ones((128, 1))
    k, power = metrics.radial_power_spectrum(wave, rings=32, apodization_px=0)
    assert k[np.nanargmax(power)] == pytest.approx(0.5, abs=1 / 32)
    radius = np.hypot(np.fft.fftfreq(128)[:, None] / 0.5, np.fft.fftfreq(128)[None, :] / 0.5)
    counts = np.bincount(np.floor(radius[(radius > 0) & (radius < 1)] * 32).astype(int), minlength=32)
    assert np.nansum(power * counts) == pytest.approx(np.sum(wave**2), rel=1e-9)
    # Any field: each ring's value is the mean of |F|^2 / N over its frequencies (scipy.ndimage's labelled mean).
    field = rng.normal(size=(64, 48))
    k, power = metrics.radial_power_spectrum(field, rings=16, apodization_px=0)
    spectrum = np.abs(np.fft.fft2(field - field.mean())) ** 2 / field.size
    radius = np.hypot(np.fft.fftfreq(64)[:, None] / 0.5, np.fft.fftfreq(48)[None, :] / 0.5)
    labels = np.where((radius > 0) & (radius < 1), np.floor(radius * 16).astype(int) + 1, 0)
    assert power == pytest.approx(ndimage.mean(spectrum, labels, np.arange(1, 17)), rel=1e-9)


def test_white_noise_has_a_flat_spectrum_at_its_variance(rng):
    k, power = metrics.radial_power_spectrum(2.0 * rng.normal(size=(256, 256)), apodization_px=0)
    assert power[k > 0.25] == pytest.approx(4.0, rel=0.15)


def test_spectral_error_closed_forms_and_blur(rng):
    truth = rng.normal(size=(128, 128))
    assert metrics.spectral_error_db(truth, truth) == 0.0
    assert metrics.spectral_error_db(2.0 * truth, truth) == pytest.approx(20 * np.log10(2.0))
    # Another draw of the same process (a "sample") is close; a smoothed copy (a "mean") is far, more so the
    # more it is smoothed.
    other = metrics.spectral_error_db(rng.normal(size=(128, 128)), truth)
    blurred = [metrics.spectral_error_db(ndimage.gaussian_filter(truth, s), truth) for s in (0.5, 1.0, 2.0)]
    assert other < 1.0 < blurred[0] < blurred[1] < blurred[2]
    # A band-limited truth: an estimate with noise only above its band differs only in the rings above `high`.
    k = np.hypot(np.fft.fftfreq(128)[:, None] / 0.5, np.fft.fftfreq(128)[None, :] / 0.5)
    band = lambda field, keep: np.real(np.fft.ifft2(np.fft.fft2(field) * keep))  # noqa: E731
    limited = band(truth, k < 0.4)
    noisy = limited + band(rng.normal(size=(128, 128)), k > 0.6)
    assert metrics.spectral_error_db(noisy, limited, high=0.5) < 0.2 < 10 < metrics.spectral_error_db(noisy, limited)
    with pytest.raises(InputError):
        metrics.spectral_error_db(truth, truth[:64])
    with pytest.raises(InputError, match="one channel"):
        metrics.radial_power_spectrum(np.zeros((16, 16, 3)))


def test_rank_correlation_hand_case():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)), d = rank differences (-1, 1, -1, 1, 0)
    assert metrics.rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / 120)


def test_rank_correlation_monotone_maps(rng):
    x = rng.random((16, 16))
    assert metrics.rank_correlation(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert metrics.rank_correlation(x, -(x**3)) == pytest.approx(-1.0)
    assert np.isnan(metrics.rank_correlation(x, np.ones_like(x)))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=30, unique=True), st.integers(0, 2**31 - 1))
def test_rank_correlation_invariant_under_monotone_transforms(values, seed):
    x = np.asarray(values, dtype=np.float64)  # integers: the transforms below keep them distinct
    y = np.random.default_rng(seed).permutation(x)
    rho = metrics.rank_correlation(x, y)
    assert -1.0 - 1e-12 <= rho <= 1.0 + 1e-12
    assert metrics.rank_correlation(np.arctan(x / 100), np.exp(y / 100)) == pytest.approx(rho, abs=1e-12)


def test_uncertainty_correlations(rng):
    truth = rng.random((16, 16))
    prediction = truth + rng.standard_normal(truth.shape)
    error = np.abs(prediction - truth)
    result = metrics.uncertainty_correlations(error**2, 1.0 / error, prediction, truth)
    assert set(result) == {"std_vs_error", "schedule_vs_error"}
    assert result["std_vs_error"] == pytest.approx(1.0)
    assert result["schedule_vs_error"] == pytest.approx(-1.0)
