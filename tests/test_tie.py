"""The TIE baseline against known phases simulated with the Fresnel model (cvdm-math.md section 6)."""

import numpy as np
import pytest
import scipy.fft
import scipy.signal
import tensorflow as tf

from cvdm_tf.errors import InputError
from cvdm_tf.physics.fresnel import two_shot_intensities
from cvdm_tf.physics.tie import (tie_dct, tie_dirichlet, tie_fft, tie_padded, tie_us, tie_us_from_derivative,
                                 tune_regularization)

# Small enough to leave the large-scale phase alone on <= 128 px images (cut-off period ~ 2 pi / 1e-9^0.25 px).
NOISE_FREE_REG = 1e-9


def _offset_free(phase):
    return phase - phase.mean(axis=(-2, -1), keepdims=True)


def _mae(estimate, truth):
    return float(np.mean(np.abs(_offset_free(np.asarray(estimate, np.float64)) - _offset_free(truth))))


def _cells(height, width, blobs, peak_rad):
    """Smooth cell-like phase: Gaussians (y, x, sigma in px, weight), wrapped so the phase is periodic."""
    y_px, x_px = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = np.zeros((height, width))
    for cy, cx, sigma, weight in blobs:
        dy = (y_px - cy + height / 2) % height - height / 2
        dx = (x_px - cx + width / 2) % width - width / 2
        phase += weight * np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return peak_rad * phase / phase.max()


# Cells at least 3.5 sigma from the borders: the phase is flat there, so both periodic (FFT) and reflective (DCT)
# boundaries are right, and both solvers can be held to the same accuracy.
CELLS_A = [(30, 40, 8, 1.0), (60, 85, 10, 0.8), (35, 100, 6, 0.6), (62, 35, 7, 0.7)]
CELLS_B = [(48, 64, 12, 1.0), (25, 25, 6, 0.5), (60, 100, 8, 0.9)]


@pytest.fixture(scope="module")
def cell_pair():
    """Two 96 x 128 cell-like phases (peak 2.5 and 1.5 rad) and their noise-free float32 intensity pairs."""
    phases = np.stack([_cells(96, 128, CELLS_A, 2.5), _cells(96, 128, CELLS_B, 1.5)]).astype(np.float32)
    return phases, two_shot_intensities(phases).numpy()


# --- Accuracy on smooth cell-like phases ------------------------------------------------------------------------


def test_tie_fft_recovers_cell_phase(cell_pair):
    phases, intensities = cell_pair
    estimate = tie_fft(intensities, regularization=NOISE_FREE_REG).numpy()
    assert estimate.shape == phases.shape and estimate.dtype == np.float32
    # Measured 7e-5 rad. A missing factor 2 in 2 dz, or k = 1 / lam instead of 2 pi / lam, is off by > 0.1 rad.
    assert _mae(estimate, phases) < 2e-3
    # Scale and sign: least-squares slope of estimate on truth is 1 (a wrong k or dz scales it, a sign flips it).
    truth = _offset_free(phases.astype(np.float64)).ravel()
    slope = np.dot(_offset_free(estimate).ravel(), truth) / np.dot(truth, truth)
    assert abs(slope - 1.0) < 0.01


def test_tie_sign_correlates_with_truth(cell_pair):
    phases, intensities = cell_pair
    for estimate in (tie_fft(intensities).numpy(), tie_dct(intensities).numpy(), tie_us(intensities).numpy()):
        for i in range(len(phases)):
            correlation = np.corrcoef(estimate[i].ravel(), phases[i].ravel())[0, 1]
            assert correlation > 0.99


def test_default_regularization_is_usable(cell_pair):
    # The default (1e-6) trades some large-scale phase for noise robustness; it must still be a good estimate.
    phases, intensities = cell_pair
    assert _mae(tie_fft(intensities).numpy(), phases) < 0.05  # measured 0.016


# --- Boundaries ----------------------------------------------------------------------------------------------


def _non_periodic_crop(size_px=64):
    """A camera crop: a smooth phase step (tanh, 1.5 rad, flat at the borders) rising along x plus a bump.

    Simulated on a 4x wider periodic grid (step up in the crop, down far outside it), then cropped, so the
    intensities are free of simulation artefacts while the cropped phase is not periodic.
    """
    width = 4 * size_px
    y_px, x_px = np.mgrid[0:size_px, 0:width].astype(np.float64)
    left, step_width = size_px, size_px / 8
    rise_px, fall_px = left + size_px / 2, 3 * left + size_px / 2
    step = 0.75 * (np.tanh((x_px - rise_px) / step_width) - np.tanh((x_px - fall_px) / step_width))
    r2_px2 = (x_px - left - 0.3 * size_px) ** 2 + (y_px - 0.6 * size_px) ** 2
    bump = 1.2 * np.exp(-r2_px2 / (2 * (size_px / 16) ** 2))
    phase = (step + bump).astype(np.float32)
    intensities = two_shot_intensities(phase).numpy()
    return phase[:, left : left + size_px], intensities[:, left : left + size_px]


def test_tie_dct_recovers_cell_phase(cell_pair):
    # Measured 7e-3 rad: the cells' Gaussian tails still carry a little phase flux through the borders,
    # which reflective boundaries assume to be zero.
    phases, intensities = cell_pair
    assert _mae(tie_dct(intensities, regularization=NOISE_FREE_REG).numpy(), phases) < 2e-2


def test_tie_dct_beats_fft_on_non_periodic_phase():
    phase, intensities = _non_periodic_crop()
    candidates = [1e-10, 1e-8, 1e-6]  # each solver at its best, so the comparison is about boundaries only
    _, fft_table = tune_regularization(intensities, phase, solver="fft", candidates=candidates)
    _, dct_table = tune_regularization(intensities, phase, solver="dct", candidates=candidates)
    fft_error, dct_error = min(fft_table.values()), min(dct_table.values())
    # Measured at 64 px: DCT 0.003 rad, FFT 0.37 rad (the periodic solver must make opposite edges equal).
    assert dct_error < 0.02
    assert dct_error * 20 < fft_error


def test_tie_dct_equals_mirror_padded_fft(rng):
    intensities = 1.0 + 0.05 * rng.normal(size=(2, 24, 40, 2)).astype(np.float32)
    mirrored = np.concatenate([intensities, intensities[:, ::-1]], axis=1)
    mirrored = np.concatenate([mirrored, mirrored[:, :, ::-1]], axis=2)
    via_fft = tie_fft(mirrored, regularization=1e-4).numpy()[:, :24, :40]
    np.testing.assert_allclose(tie_dct(intensities, regularization=1e-4).numpy(), via_fft, atol=1e-4)


# --- Regularisation ------------------------------------------------------------------------------------------


def _band_power(images, kappa_low, kappa_high):
    """Mean spectral power at kappa_low < kappa < kappa_high rad / px."""
    height, width = images.shape[-2:]
    kappa = 2 * np.pi * np.hypot(*np.meshgrid(np.fft.fftfreq(width), np.fft.fftfreq(height)))
    band = (kappa > kappa_low) & (kappa < kappa_high)
    return float(np.mean(np.abs(np.fft.fft2(images))[..., band] ** 2))


def test_regularization_suppresses_low_frequency_noise(rng):
    # Flat phase, noisy intensities: everything the solver returns is noise, amplified by 1 / kappa^2.
    intensities = (1.0 + 0.05 * rng.normal(size=(2, 128, 128, 2))).astype(np.float32)
    estimates = [tie_fft(intensities, regularization=r).numpy() for r in (1e-9, 1e-6, 1e-4, 1e-2)]
    low = [_band_power(e, 0.0, 0.1) for e in estimates]  # the lowest rings, kappa^4 ~ 1e-5 .. 1e-4
    high = [_band_power(e, 1.0, 10.0) for e in estimates]
    assert all(stronger < weaker for weaker, stronger in zip(low, low[1:]))
    assert low[2] < low[0] / 50  # measured / 58
    # ... while the high frequencies, where 1 / kappa^2 is small, are left alone.
    assert high[2] == pytest.approx(high[0], rel=1e-2)


def test_tune_regularization_returns_grid_minimum(cell_pair, rng):
    phases, intensities = cell_pair
    noisy = (intensities + 0.1 * rng.normal(size=intensities.shape)).astype(np.float32)
    best, table = tune_regularization(noisy, phases)
    assert len(table) == 25 and min(table) == pytest.approx(1e-12) and max(table) == pytest.approx(1.0)
    assert table[best] == min(table.values())
    # On noisy data the best weight is interior: better than no damping and than damping everything.
    # Measured: 0.16 rad at 1e-5, against 0.22 at 1e-12 and 0.27 at 1.
    assert table[best] < 0.9 * table[min(table)]
    assert table[best] < 0.8 * table[max(table)]


def test_tune_regularization_rejects_unknown_solver(cell_pair):
    phases, intensities = cell_pair
    with pytest.raises(InputError):
        tune_regularization(intensities, phases, solver="teague")
    with pytest.raises(InputError):
        tune_regularization(intensities, phases, defocus=1.0)


# --- Batching, dtype, graph mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [tie_fft, tie_dct, tie_us])
def test_batched_equals_per_image_and_zero_mean(solver, cell_pair):
    phases, intensities = cell_pair
    batched = solver(intensities[np.newaxis]).numpy()  # [1, 2, H, W]: any number of leading axes
    assert batched.shape == (1,) + phases.shape
    for i in range(len(phases)):
        np.testing.assert_allclose(batched[0, i], solver(intensities[i]).numpy(), atol=1e-5)
    np.testing.assert_allclose(batched.mean(axis=(-2, -1)), 0.0, atol=1e-6)


@pytest.mark.parametrize("solver, bound_rad", [(tie_fft, 2e-3), (tie_dct, 2e-2), (tie_us, 2e-2)])
def test_float64_in_float64_out(solver, bound_rad, cell_pair):
    phases, intensities = cell_pair
    estimate = solver(intensities.astype(np.float64), regularization=NOISE_FREE_REG).numpy()
    assert estimate.dtype == np.float64
    assert _mae(estimate, phases) < bound_rad


@pytest.mark.parametrize("solver", [tie_fft, tie_dct, tie_us])
def test_tie_in_tf_function_and_tf_data(solver, rng):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    def retrieve(intensities):
        return solver(intensities, defocus_um=tf.constant(1.0), regularization=tf.constant(1e-6))

    for shape in [(2, 32, 48, 2), (1, 40, 24, 2)]:
        intensities = (1.0 + 0.05 * rng.normal(size=shape)).astype(np.float32)
        np.testing.assert_allclose(retrieve(intensities).numpy(), solver(intensities).numpy(), atol=1e-5)

    phases = rng.uniform(0, 1, (2, 32, 32)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(phases).map(lambda p: solver(two_shot_intensities(p)))
    for phase, estimate in zip(phases, dataset):
        np.testing.assert_allclose(estimate.numpy(), solver(two_shot_intensities(phase)).numpy(), atol=1e-5)


# --- US-TIE: non-uniform intensity -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def absorbing_pair(cell_pair):
    """The cell phases of `cell_pair` seen through absorbing Gaussian blobs (amplitude 0.5..1), which sit
    beside and across the cells, not on them: I grad phi is then far from curl-free, Teague's weak spot."""
    phases, _ = cell_pair
    blobs = [[(45, 60, 14, 1.0)], [(40, 50, 10, 1.0), (55, 90, 9, 0.7)]]
    amplitudes = np.stack([1.0 - 0.5 * _cells(96, 128, b, 1.0) for b in blobs]).astype(np.float32)
    return phases, amplitudes, two_shot_intensities(phases, amplitude=amplitudes).numpy()


def test_tie_us_recovers_phase_through_absorption_where_uniform_solvers_fail(absorbing_pair):
    phases, amplitudes, intensities = absorbing_pair
    assert amplitudes.min() == pytest.approx(0.5, abs=1e-3) and amplitudes.max() == pytest.approx(1.0, abs=1e-3)
    candidates = [1e-12, 1e-10, 1e-8, 1e-6, 1e-4]  # every solver at its own best weight
    errors = {name: min(tune_regularization(intensities, phases, solver=name, candidates=candidates)[1].values())
              for name in ("fft", "dct", "us")}
    # Measured: US 0.0084 rad (the floor is the DCT boundary error of the cells' Gaussian tails, 0.0075 rad on the
    # same phases without absorption), FFT 0.043, DCT 0.056. The uniform solvers read the absorber's intensity
    # pattern as phase curvature.
    assert errors["us"] < 0.015
    assert errors["fft"] > 4 * errors["us"] and errors["dct"] > 5 * errors["us"]
    # The measured in-focus intensity instead of the mean of the pair: the same within O(dz^2) (measured 3e-8).
    with_focus = tie_us(intensities, regularization=1e-9, in_focus=amplitudes**2).numpy()
    assert abs(_mae(with_focus, phases) - _mae(tie_us(intensities, regularization=1e-9).numpy(), phases)) < 1e-3


def test_tie_us_iterations_remove_teague_curl_error(absorbing_pair):
    # Teague's solution alone (0 iterations) assumes I grad phi is curl-free: measured 0.036 rad here; three
    # conjugate-gradient iterations reach the 0.0084 rad floor.
    phases, _, intensities = absorbing_pair
    errors = [_mae(tie_us(intensities, regularization=1e-9, iterations=n).numpy(), phases) for n in (0, 3, 10)]
    assert errors[0] > 3 * errors[1]
    assert errors[2] <= errors[1] + 1e-4


def test_tie_us_from_derivative_corrects_teague_with_its_default_iterations(absorbing_pair):
    """US-TIE with its default iterations (as benchmarks/reference_phase_speed.py calls it), given the in-focus
    intensity and dI/dz of `absorbing_pair`, whose absorber does not follow the cells: I grad phi has curl there,
    so Teague's solution alone (0 iterations) is wrong and the default conjugate-gradient iterations must remove
    most of it. Measured: 0.0084 rad against Teague's 0.0361 (one iteration already gives 0.0085; the floor is the
    DCT boundary error of the cells' tails, 0.0075)."""
    phases, amplitudes, intensities = absorbing_pair
    d_intensity_dz = (intensities[..., 1] - intensities[..., 0]) / 2.0  # dz = 1 um, two_shot_intensities' default

    def error(**iterations):
        return _mae(tie_us_from_derivative(amplitudes**2, d_intensity_dz, regularization=1e-9, **iterations).numpy(),
                    phases)

    default, teague = error(), error(iterations=0)
    assert default < 0.01
    assert default < teague / 3, (default, teague)


def test_tie_us_converges_on_high_intensity_contrast(cell_pair):
    # I0 spans 100x (amplitude 0.1..1): Zhang et al.'s plain compensation diverges here (measured: MAE 1e2 rad
    # after 10 iterations on such objects); conjugate gradients converge.
    phases, _ = cell_pair
    amplitudes = (1.0 - 0.9 * _cells(96, 128, [(45, 60, 14, 1.0), (20, 100, 8, 0.8)], 1.0))[np.newaxis]
    intensities = two_shot_intensities(phases.astype(np.float64), amplitude=amplitudes, defocus_um=0.5).numpy()
    errors = [
        _mae(tie_us(intensities, defocus_um=0.5, regularization=1e-10, iterations=n).numpy(), phases)
        for n in (0, 10, 20)
    ]
    assert errors[1] < 0.02 and errors[1] < errors[0] / 3
    assert errors[2] <= errors[1] + 1e-4


def test_tie_us_is_tie_dct_for_uniform_intensity(rng):
    # With a uniform I0 the TIE is one Poisson equation and Teague's two solves collapse into tie_dct's one: the
    # same Tikhonov filter, the same Neumann boundaries. Equal to 3e-8 relative in float64: tie_dct's kappa uses
    # tf.cast(math.pi, tf.float64), which rounds pi through float32 (relative error 3e-8).
    intensities = 1.0 + 0.05 * rng.normal(size=(2, 24, 40, 2))
    d_intensity_dz = (intensities[..., 1] - intensities[..., 0]) / 2.0
    uniform = np.broadcast_to(intensities.mean(axis=(-3, -2, -1), keepdims=True)[..., 0], (2, 24, 40))
    for regularization in (0.0, 1e-6, 1e-2):
        us = tie_us_from_derivative(uniform, d_intensity_dz, regularization=regularization).numpy()
        dct = tie_dct(intensities, regularization=regularization).numpy()
        np.testing.assert_allclose(us, dct, rtol=0, atol=1e-6 * np.abs(dct).max())


def test_tie_us_agrees_with_uniform_solvers_on_pure_phase(cell_pair):
    # A pure phase object: I0 (the mean of the pair) is uniform up to O(dz^2), so US-TIE and tie_dct agree to
    # ~1e-4 rad (measured: mean |difference| 1.3e-4, max 3e-3 rad, on phases of 1.5-2.5 rad).
    phases, intensities = cell_pair
    us = tie_us(intensities, regularization=NOISE_FREE_REG).numpy()
    dct = tie_dct(intensities, regularization=NOISE_FREE_REG).numpy()
    assert np.mean(np.abs(us - dct)) < 1e-3 and np.max(np.abs(us - dct)) < 1e-2
    assert _mae(us, phases) < 2e-2  # measured 0.0075, the DCT boundary error of the cells' tails


def test_tie_us_rejects_bad_arguments(cell_pair):
    _, intensities = cell_pair
    for bad in ({"iterations": -1}, {"iterations": 1.5}, {"regularization": -1.0}, {"wavelength_um": 0.0}):
        with pytest.raises(InputError):
            tie_us(intensities, **bad)
    with pytest.raises(InputError):
        tie_us_from_derivative(intensities[..., 0], intensities[..., 1], min_intensity=0.0)


# === Camera frames: free-space and Dirichlet solvers ===


def _pair_with_source(source, wavelength_um=0.5, pixel_size_um=0.2, defocus_um=1.0):
    """A pair whose TIE source dx^2 k dI/dz / mean(I0) is exactly `source` (uniform I0 = 1)."""
    d_intensity_dz = source / (pixel_size_um**2 * 2 * np.pi / wavelength_um)
    return np.stack([1 - defocus_um * d_intensity_dz, 1 + defocus_um * d_intensity_dz], axis=-1)


def test_padded_tie_approximates_the_free_space_potential_of_the_frame_where_fft_and_dct_do_not(rng):
    # A source inside the frame and nothing outside: the free-space solution of laplacian(phi) = -f is the
    # convolution with -log(r) / (2 pi), computed here by direct convolution (scipy), not by a Poisson solve.
    size = 48
    source = np.zeros((size, size))
    source[10:30, 15:40] = rng.normal(size=(20, 25))
    offsets = np.arange(-size + 1, size)
    radius = np.hypot(offsets[:, None], offsets[None, :])
    # The centre cell: the mean of log(r) over the unit-area disc, log(1 / sqrt(pi)) - 1/2.
    green = -np.log(np.where(radius == 0, np.exp(np.log(1 / np.sqrt(np.pi)) - 0.5), radius)) / (2 * np.pi)
    expected = scipy.signal.fftconvolve(source, green, mode="same")
    expected -= expected.mean()
    pair = _pair_with_source(source)
    errors = {solver.__name__: np.abs(solver(pair, 1.0, 0.5, 0.2, 0.0).numpy() - expected).max()
              for solver in (tie_padded, tie_fft, tie_dct)}
    scale = np.abs(expected).max()
    # Measured: 0.10, 0.35 and 0.46 of the potential's peak (the 2x grid's images keep padding from being exact).
    assert errors["tie_padded"] < 0.15 * scale
    assert errors["tie_fft"] > 0.25 * scale and errors["tie_dct"] > 0.25 * scale


@pytest.mark.parametrize("margin", [0, 5])
def test_dirichlet_tie_is_the_sine_transform_poisson_solve_of_the_trusted_source(margin, rng):
    # Against scipy's DST-I, whose basis sin(pi m (i + 1) / (H + 1)) vanishes one pixel beyond each edge: the
    # same boundary as the odd extension, reached by another transform.
    height, width = 40, 52
    source = rng.normal(size=(height, width))
    trusted = source.copy()
    if margin:
        trusted[:margin], trusted[-margin:], trusted[:, :margin], trusted[:, -margin:] = 0, 0, 0, 0
    kappa_y = np.pi * np.arange(1, height + 1) / (height + 1)
    kappa_x = np.pi * np.arange(1, width + 1) / (width + 1)
    expected = scipy.fft.idstn(scipy.fft.dstn(trusted, type=1) / (kappa_y[:, None]**2 + kappa_x[None, :]**2), type=1)
    got = tie_dirichlet(_pair_with_source(source), 1.0, 0.5, 0.2, 0.0, margin).numpy()
    np.testing.assert_allclose(got, expected - expected.mean(), atol=1e-5 * np.abs(expected).max())
