"""Fluorescence image formation against closed forms and invariants: the circular-pupil OTF, the Airy zero,
photon conservation, the resolution gain of the SIM-like target, noise moments, and the classical baselines."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.errors import InputError
from cvdm_tf.physics.optics import (
    bicubic_up,
    bin2,
    blur,
    otf,
    poisson_gaussian,
    psf,
    pupil,
    richardson_lucy_sr,
    sim_image,
    widefield,
)

NA = 1.3
WAVELENGTH_UM = 0.525
PIXEL_SIZE_UM = 0.0313  # BioSR's SIM grid (sr-notes.md)
WIDEFIELD_CUTOFF = 2 * NA / WAVELENGTH_UM  # 4.95 cycles / um
SIM_CUTOFF = 2 * WIDEFIELD_CUTOFF  # 9.90 cycles / um


def _radial_frequency(height, width, pixel_size_um):
    fy = np.fft.fftfreq(height, pixel_size_um)[:, None]
    fx = np.fft.fftfreq(width, pixel_size_um)[None, :]
    return np.hypot(fx, fy)


def _closed_form_otf(frequency, cutoff):
    """Goodman eq. 6-32: the OTF of a diffraction-limited circular pupil."""
    s = np.clip(frequency / cutoff, 0.0, 1.0)
    return (2 / np.pi) * (np.arccos(s) - s * np.sqrt(1 - s * s))


def _delta(height, width):
    image = np.zeros((height, width), np.float32)
    image[height // 2, width // 2] = 1.0
    return image


def _relative_error_after_scaling(estimate, truth):
    """||a x - t|| / ||t|| with the least-squares gain a: the baselines keep per-pixel units, the truth does not."""
    gain = np.sum(estimate * truth) / np.sum(estimate * estimate)
    return np.linalg.norm(gain * estimate - truth) / np.linalg.norm(truth)


# --- Pupil and OTF ---------------------------------------------------------------------------------------------


def test_pupil_is_the_disc_of_radius_na_over_wavelength():
    values = pupil(64, 48, PIXEL_SIZE_UM, NA, WAVELENGTH_UM).numpy()
    inside = _radial_frequency(64, 48, PIXEL_SIZE_UM) <= NA / WAVELENGTH_UM
    assert values.dtype == np.float32 and values.shape == (64, 48)
    np.testing.assert_array_equal(values, inside.astype(np.float32))


@pytest.mark.parametrize("height, width, tolerance", [(256, 256, 1e-3), (96, 128, 6e-3)])
def test_otf_matches_the_circular_pupil_closed_form(height, width, tolerance):
    # dx = 0.08 um puts the cut-off (4.95 cycles / um) at 0.8x Nyquist with the pupil 51 frequency pixels wide
    # (256 x 256) or 19-25 (96 x 128); the sampled pupil's autocorrelation then differs from the continuous one
    # by at most 6.2e-4 and 4.5e-3 (measured; it falls like 1 / pupil pixels).
    pixel_size_um = 0.08
    numeric = otf(height, width, pixel_size_um, NA, WAVELENGTH_UM).numpy()
    expected = _closed_form_otf(_radial_frequency(height, width, pixel_size_um), WIDEFIELD_CUTOFF)
    assert numeric.dtype == np.float32 and numeric.shape == (height, width)
    assert numeric[0, 0] == pytest.approx(1.0, abs=1e-7)
    np.testing.assert_allclose(numeric, expected, atol=tolerance)


def test_otf_is_zero_beyond_the_cutoff():
    numeric = otf(128, 96, PIXEL_SIZE_UM, NA, WAVELENGTH_UM).numpy()
    frequency = _radial_frequency(128, 96, PIXEL_SIZE_UM)
    assert np.abs(numeric[frequency > WIDEFIELD_CUTOFF * (1 + 1e-9)]).max() < 1e-7
    assert numeric[frequency < 0.9 * WIDEFIELD_CUTOFF].min() > 0.0


# --- PSF and blur ----------------------------------------------------------------------------------------------


def test_psf_is_centred_normalised_and_consistent_with_the_otf():
    kernel = psf(33, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)
    assert kernel.dtype == np.float32 and kernel.shape == (33, 33)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert kernel.min() >= 0.0
    assert np.unravel_index(kernel.argmax(), kernel.shape) == (16, 16)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)  # circular pupil: symmetric
    # The blur of a delta on a 128 x 128 grid is the same PSF up to the pupil's sampling (measured 0.6 %).
    blurred = blur(_delta(128, 128), otf(128, 128, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)).numpy()[48:81, 48:81]
    np.testing.assert_allclose(blurred / blurred.sum(), kernel, atol=0.02 * kernel.max())


@pytest.mark.parametrize("size", [0, 4, 7.0])
def test_psf_rejects_kernels_without_a_centre_pixel(size):
    with pytest.raises(InputError):
        psf(size, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)


def test_blur_of_a_delta_has_its_first_zero_at_the_airy_radius():
    blurred = blur(_delta(128, 128), otf(128, 128, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)).numpy()
    profile = blurred[64, 64:]
    first_minimum = next(i for i in range(1, 63) if profile[i] <= profile[i - 1] and profile[i] <= profile[i + 1])
    airy_px = 0.61 * WAVELENGTH_UM / NA / PIXEL_SIZE_UM  # 7.87 px
    assert abs(first_minimum - airy_px) <= 1.0
    assert blurred.argmax() == 64 * 128 + 64


def test_blur_conserves_total_intensity(rng):
    image = rng.uniform(size=(3, 48, 64)).astype(np.float32)
    blurred = blur(image, otf(48, 64, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)).numpy()
    assert blurred.shape == image.shape
    np.testing.assert_allclose(blurred.sum(axis=(-2, -1)), image.sum(axis=(-2, -1)), rtol=1e-5)
    assert blurred.min() > -1e-5  # the intensity PSF is non-negative


def test_blur_rejects_an_otf_of_another_grid():
    with pytest.raises(InputError):
        blur(np.zeros((32, 32), np.float32), otf(32, 48, PIXEL_SIZE_UM, NA, WAVELENGTH_UM))


# --- Binning and the image pair --------------------------------------------------------------------------------


def test_bin2_sums_blocks_and_conserves_photons(rng):
    image = rng.poisson(5.0, size=(2, 3, 8, 12)).astype(np.float32)
    binned = bin2(image).numpy()
    assert binned.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(binned.sum(axis=(-2, -1)), image.sum(axis=(-2, -1)))
    assert binned[1, 2, 3, 5] == image[1, 2, 6:8, 10:12].sum()


@pytest.mark.parametrize("shape", [(7, 8), (8, 9), (8,)])
def test_bin2_rejects_odd_or_flat_images(shape):
    with pytest.raises(InputError):
        bin2(np.zeros(shape, np.float32))


def test_widefield_and_sim_shapes_and_totals_on_non_square_batches(rng):
    structure = rng.uniform(size=(2, 48, 80)).astype(np.float32)
    camera = widefield(structure, PIXEL_SIZE_UM).numpy()
    target = sim_image(structure, PIXEL_SIZE_UM).numpy()
    assert camera.shape == (2, 24, 40) and camera.dtype == np.float32
    assert target.shape == (2, 48, 80) and target.dtype == np.float32
    np.testing.assert_allclose(camera.sum(axis=(-2, -1)), structure.sum(axis=(-2, -1)), rtol=1e-5)
    np.testing.assert_allclose(target.sum(axis=(-2, -1)), structure.sum(axis=(-2, -1)), rtol=1e-5)


def test_float64_structures_stay_in_double_precision(rng):
    structure = rng.uniform(size=(32, 48))
    camera = widefield(structure, PIXEL_SIZE_UM).numpy()
    target = sim_image(structure, PIXEL_SIZE_UM).numpy()
    assert camera.dtype == target.dtype == np.float64
    assert camera.sum() == pytest.approx(structure.sum(), rel=1e-12)
    assert target.sum() == pytest.approx(structure.sum(), rel=1e-12)


def test_grating_between_the_two_cutoffs_is_resolved_only_by_the_sim_target():
    # 28 periods over 128 px of 31.3 nm: 6.99 cycles / um, between the widefield (4.95) and SIM (9.90) cut-offs.
    periods, size = 28, 128
    grating = 1 + np.cos(2 * np.pi * periods * np.arange(size) / size)
    structure = np.tile(grating, (size, 1)).astype(np.float32)

    def contrast(image):
        return (image.max() - image.min()) / (image.max() + image.min())

    frequency = periods / (size * PIXEL_SIZE_UM)
    assert contrast(widefield(structure, PIXEL_SIZE_UM).numpy()) < 1e-5
    # The grating's contrast is the OTF at its frequency: the closed form 0.183 up to the pupil's sampling.
    assert contrast(sim_image(structure, PIXEL_SIZE_UM).numpy()) == pytest.approx(
        _closed_form_otf(frequency, SIM_CUTOFF), abs=0.01
    )


def test_two_points_below_the_widefield_limit_are_resolved_only_by_the_sim_target():
    # 6 px = 0.19 um apart: below the widefield Rayleigh distance (0.25 um), above the SIM one (0.12 um).
    structure = np.zeros((64, 64), np.float32)
    structure[32, 20] = structure[32, 26] = 1.0
    target = sim_image(structure, PIXEL_SIZE_UM).numpy()[32]
    assert target[23] < 0.5 * min(target[20], target[26])  # a deep dip between the points
    camera = widefield(structure, PIXEL_SIZE_UM).numpy()[16]  # points in camera pixels 10 and 13
    assert camera[11] >= camera[10] and camera[12] >= camera[13]  # one blob, no dip


def test_widefield_runs_in_a_tf_function_with_unknown_shapes():
    compiled = tf.function(
        lambda s: widefield(s, PIXEL_SIZE_UM), input_signature=[tf.TensorSpec([None, None, None], tf.float32)]
    )
    structure = np.random.default_rng(1).uniform(size=(2, 32, 48)).astype(np.float32)
    np.testing.assert_allclose(compiled(structure).numpy(), widefield(structure, PIXEL_SIZE_UM).numpy(), atol=1e-6)


def test_the_pair_and_noise_run_in_a_tf_data_map():
    structures = np.random.default_rng(3).uniform(size=(3, 32, 48)).astype(np.float32)

    def simulate(index, structure):
        seed = tf.stack([tf.constant(7, tf.int64), index])
        return poisson_gaussian(widefield(structure, PIXEL_SIZE_UM), 100.0, 1.0, seed), sim_image(structure, 0.0313)

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(3, dtype=tf.int64), structures)).map(simulate)
    pairs = list(dataset.as_numpy_iterator())
    assert [(a.shape, b.shape) for a, b in pairs] == [((16, 24), (32, 48))] * 3
    np.testing.assert_array_equal(pairs[1][0], list(dataset.as_numpy_iterator())[1][0])


@pytest.mark.parametrize("name, value", [("pixel_size_um", 0.0), ("na", -1.0), ("wavelength_um", 0)])
def test_non_positive_optics_are_rejected(name, value):
    arguments = {**dict(pixel_size_um=PIXEL_SIZE_UM, na=NA, wavelength_um=WAVELENGTH_UM), name: value}
    with pytest.raises(InputError, match=name):
        widefield(np.zeros((8, 8), np.float32), **arguments)


# --- Noise -----------------------------------------------------------------------------------------------------


def test_poisson_gaussian_moments():
    # Two levels, 32768 pixels each: the standard error of the mean is ~0.03 photons, of the variance ~0.8.
    image = np.stack([np.full((128, 256), 0.5), np.full((128, 256), 2.0)]).astype(np.float32)
    photons, read_noise = 50.0, 3.0
    noisy = poisson_gaussian(image, photons, read_noise, tf.constant([1, 2], tf.int64)).numpy()
    assert noisy.shape == image.shape and noisy.dtype == np.float32
    for level, plane in zip((0.5, 2.0), noisy):
        expected_mean = photons * level
        assert plane.mean() == pytest.approx(expected_mean, abs=0.2)
        assert plane.var() == pytest.approx(expected_mean + read_noise**2, rel=0.05)


def test_poisson_gaussian_is_deterministic_per_seed():
    image = np.random.default_rng(2).uniform(size=(2, 16, 24)).astype(np.float32)
    first = poisson_gaussian(image, 100.0, 2.0, tf.constant([3, 4], tf.int64)).numpy()
    again = poisson_gaussian(image, 100.0, 2.0, tf.constant([3, 4], tf.int64)).numpy()
    other = poisson_gaussian(image, 100.0, 2.0, tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_poisson_without_read_noise_gives_integer_counts():
    counts = poisson_gaussian(np.full((16, 16), 3.0, np.float32), 10.0, 0.0, tf.constant([0, 1], tf.int64)).numpy()
    np.testing.assert_array_equal(counts, np.round(counts))
    assert counts.min() >= 0


# --- Baselines -------------------------------------------------------------------------------------------------


def _sparse_puncta(size, count, rng):
    """Gaussian dots of sigma 1 fine px (31 nm) at random places: a CCP-like test structure."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size))
    for _ in range(count):
        cy, cx = rng.uniform(8, size - 8, 2)
        image += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
    return image.astype(np.float32)


def test_bicubic_up_shapes_and_range(rng):
    image = rng.uniform(size=(2, 12, 20)).astype(np.float32)
    upsampled = bicubic_up(image, 3)
    assert upsampled.shape == (2, 36, 60) and upsampled.dtype == np.float32
    assert image.min() <= upsampled.min() and upsampled.max() <= image.max()
    np.testing.assert_allclose(bicubic_up(np.full((5, 7), 2.0), 2), 2.0, atol=1e-6)


def test_richardson_lucy_beats_bicubic_on_sparse_puncta(rng):
    # Measured on this image: relative error vs the structure 0.46 (RL, 20 iterations) vs 0.81 (bicubic), and
    # vs the SIM target 0.23 vs 0.52, with the noise below.
    structure = _sparse_puncta(128, 25, rng)
    camera = widefield(structure, PIXEL_SIZE_UM).numpy()
    camera = poisson_gaussian(camera, 200.0, 1.0, tf.constant([0, 1], tf.int64)).numpy()
    restored = richardson_lucy_sr(camera, PIXEL_SIZE_UM, NA, WAVELENGTH_UM, iterations=20)
    upsampled = bicubic_up(camera, 2)
    assert restored.shape == upsampled.shape == (128, 128)
    assert restored.min() >= 0.0
    assert _relative_error_after_scaling(restored, structure) < 0.8 * _relative_error_after_scaling(
        upsampled, structure
    )
    target = sim_image(structure, PIXEL_SIZE_UM).numpy()
    assert _relative_error_after_scaling(restored, target) < 0.8 * _relative_error_after_scaling(upsampled, target)


def test_richardson_lucy_keeps_units_on_non_square_batches(rng):
    structure = np.stack([_sparse_puncta(64, 6, rng)[:, :48] for _ in range(2)])
    camera = widefield(structure, PIXEL_SIZE_UM).numpy()  # [2, 32, 24]
    restored = richardson_lucy_sr(camera, PIXEL_SIZE_UM, NA, WAVELENGTH_UM, iterations=10)
    assert restored.shape == (2, 64, 48)
    # Per-pixel units: the fine-grid total is 4x the camera total (RL conserves flux away from the border).
    np.testing.assert_allclose(restored.sum(axis=(-2, -1)), 4 * camera.sum(axis=(-2, -1)), rtol=0.05)


def airy_kernel(size, pixel_size_um, na, wavelength_um):
    """The in-focus intensity PSF of a circular pupil in closed form (Born & Wolf sec. 8.5.2): (2 J1(v) / v)^2,
    v = 2 pi NA r / lam, sampled at the pixel centres of a size x size grid centred on the middle pixel, sum 1.
    Written from the formula with scipy's Bessel function, independent of `psf` (which inverts the OTF)."""
    from scipy.special import j1

    centre = size // 2
    rows, cols = (np.mgrid[0:size, 0:size] - centre) * pixel_size_um
    v = 2 * np.pi * na / wavelength_um * np.hypot(rows, cols)
    v[centre, centre] = 1.0
    kernel = (2 * j1(v) / v) ** 2
    kernel[centre, centre] = 1.0  # the limit at v = 0
    return kernel / kernel.sum()


def test_psf_is_the_airy_pattern():
    """`psf` (the inverse FFT of the sampled pupil's autocorrelation) against the closed-form Airy pattern, on the
    49 px kernel Richardson-Lucy uses (three Airy radii): measured max difference 0.65% of the peak, from the
    pupil's sampling (bound 1.5%). The Airy pattern sampled at the camera's pitch (twice the fine grid's: a
    kernel half as wide in pixels) differs by 2.9 times the peak."""
    size = 49
    kernel = psf(size, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)
    airy = airy_kernel(size, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)
    assert np.abs(kernel - airy).max() < 0.015 * airy.max()
    assert np.abs(kernel - airy_kernel(size, 2 * PIXEL_SIZE_UM, NA, WAVELENGTH_UM)).max() > 0.3 * airy.max()


@pytest.mark.parametrize("iterations", [5, 20])
def test_richardson_lucy_is_scikit_images_with_the_airy_psf(iterations):
    """`richardson_lucy_sr` (the eval baseline) against its recipe rebuilt from other parts: the widefield image
    upsampled 2x by scikit-image's cubic spline, negatives clipped, scaled to max 1, then
    `skimage.restoration.richardson_lucy` with the closed-form Airy PSF (`airy_kernel`, three Airy radii), scaled
    back. The two PSFs differ by 0.65% of the peak; measured max difference of the restorations 0.12% (5
    iterations) and 0.83% (20) of the maximum, mean 0.14% / 0.48% of the mean (bounds 2% and 1%). With the Airy
    pattern sampled at the camera's pitch the difference is 35% / 139%."""
    from skimage.restoration import richardson_lucy
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    structure = np.zeros((64, 64), np.float32)
    structure[rng.integers(4, 60, 20), rng.integers(4, 60, 20)] = 1.0
    camera = poisson_gaussian(widefield(structure, PIXEL_SIZE_UM), 2000.0, 1.0, tf.constant([0, 1], tf.int64))
    camera = camera.numpy()  # [32, 32], with a few negative read-noise values
    restored = richardson_lucy_sr(camera, PIXEL_SIZE_UM, NA, WAVELENGTH_UM, iterations=iterations)
    upsampled = resize(camera.astype(np.float64), (64, 64), order=3, mode="reflect", anti_aliasing=False).clip(0)
    half = int(np.ceil(3 * 0.6098 * WAVELENGTH_UM / NA / PIXEL_SIZE_UM))
    airy = airy_kernel(2 * half + 1, PIXEL_SIZE_UM, NA, WAVELENGTH_UM)
    peak = upsampled.max()
    expected = richardson_lucy(upsampled / peak, airy, num_iter=iterations, clip=False) * peak
    assert restored.shape == expected.shape == (64, 64)
    assert np.abs(restored - expected).max() < 0.02 * expected.max()
    assert np.abs(restored - expected).mean() < 0.01 * expected.mean()
