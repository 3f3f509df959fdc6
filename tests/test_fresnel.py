"""Fresnel propagation against physics: the paraxial Gaussian beam, invariants, the shift theorem, the TIE."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.errors import InputError
from cvdm_tf.physics.fresnel import propagate, transfer_function, two_shot_intensities

WAVELENGTH_UM = 0.521
PIXEL_SIZE_UM = 0.21


def _centred_grid_um(height, width, pixel_size_um=PIXEL_SIZE_UM):
    y_um = (np.arange(height) - height // 2) * pixel_size_um
    x_um = (np.arange(width) - width // 2) * pixel_size_um
    return np.meshgrid(x_um, y_um)


def _gaussian_beam(r2_um2, z_um, waist_um, wavelength_um=WAVELENGTH_UM):
    """Closed-form paraxial Gaussian beam with waist w0 at z = 0 (Siegman, Lasers, ch. 17), E(r, 0) = exp(-r^2/w0^2).

    E(r, z) = exp(i k z) (w0 / w) exp(-r^2 / w^2) exp(i k r^2 / 2R) exp(-i psi),
    w = w0 sqrt(1 + (z/zR)^2), 1/R = z / (z^2 + zR^2), psi = atan(z / zR) (Gouy), zR = pi w0^2 / lam.
    """
    k = 2 * np.pi / wavelength_um
    rayleigh_um = np.pi * waist_um**2 / wavelength_um
    width_um = waist_um * np.sqrt(1 + (z_um / rayleigh_um) ** 2)
    inverse_radius = z_um / (z_um**2 + rayleigh_um**2)
    gouy = np.arctan(z_um / rayleigh_um)
    return (
        np.exp(1j * k * z_um)
        * (waist_um / width_um)
        * np.exp(-r2_um2 / width_um**2)
        * np.exp(1j * k * r2_um2 * inverse_radius / 2)
        * np.exp(-1j * gouy)
    )


def _relative_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _random_field(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


# --- Closed form ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z_um", [-10.0, 2.0, 10.0, 20.0])
@pytest.mark.parametrize("dtype, tolerance", [(np.complex128, 1e-6), (np.complex64, 1e-5)])
def test_gaussian_beam_matches_closed_form(z_um, dtype, tolerance):
    # 96 x 128 px of 0.21 um, w0 = 1.5 um (zR = 13.6 um): the beam stays inside the window (w(20 um) = 2.7 um,
    # half-height 10 um) and its spectrum is far below Nyquist, so periodic wrap and aliasing stay below 1e-6
    # (measured: 1e-15 up to |z| = 10 um, 2e-7 at 20 um in complex128; 2e-7 at all z in complex64).
    x_um, y_um = _centred_grid_um(96, 128)
    r2_um2 = x_um**2 + y_um**2
    field = np.exp(-r2_um2 / 1.5**2).astype(dtype)
    numeric = propagate(field, z_um, WAVELENGTH_UM, PIXEL_SIZE_UM).numpy()
    assert numeric.dtype == dtype
    assert _relative_l2(numeric, _gaussian_beam(r2_um2, z_um, 1.5)) < tolerance


def test_zero_padding_removes_periodic_wrap():
    # A narrow beam (w0 = 1 um) at z = 40 um grows to w = 6.7 um, wider than the 96 px (20 um) window allows:
    # the periodic result wraps around (5 % error), the zero-padded one is free-space propagation.
    x_um, y_um = _centred_grid_um(96, 128)
    r2_um2 = x_um**2 + y_um**2
    field = np.exp(-r2_um2).astype(np.complex128)
    exact = _gaussian_beam(r2_um2, 40.0, 1.0)
    periodic = propagate(field, 40.0).numpy()
    padded = propagate(field, 40.0, pad=64).numpy()
    assert padded.shape == field.shape
    assert _relative_l2(periodic, exact) > 1e-2
    assert _relative_l2(padded, exact) < 1e-8  # measured 3e-14


# --- Invariants ----------------------------------------------------------------------------------------------


def test_energy_is_conserved(rng):
    for _ in range(3):
        field = _random_field(rng, (2, 40, 56)).astype(np.complex128)
        z_um = rng.uniform(-50.0, 50.0)
        propagated = propagate(field, z_um).numpy()
        energy_in = np.sum(np.abs(field) ** 2, axis=(-2, -1))
        energy_out = np.sum(np.abs(propagated) ** 2, axis=(-2, -1))
        np.testing.assert_allclose(energy_out, energy_in, rtol=1e-12)


def test_zero_distance_is_identity(rng):
    field = _random_field(rng, (3, 32, 48))
    np.testing.assert_allclose(propagate(field, 0.0).numpy(), field, atol=1e-5)


def test_forward_then_backward_returns_the_field(rng):
    field = _random_field(rng, (2, 36, 64))
    round_trip = propagate(propagate(field, 7.3), -7.3).numpy()
    np.testing.assert_allclose(round_trip, field, atol=2e-5)


def test_transfer_function_is_unimodular_and_matches_formula():
    transfer = transfer_function(6, 10, 3.0, WAVELENGTH_UM, PIXEL_SIZE_UM).numpy()
    assert transfer.shape == (6, 10) and transfer.dtype == np.complex64
    np.testing.assert_allclose(np.abs(transfer), 1.0, atol=1e-6)
    fx = np.fft.fftfreq(10, d=PIXEL_SIZE_UM)[None, :]
    fy = np.fft.fftfreq(6, d=PIXEL_SIZE_UM)[:, None]
    expected = np.exp(2j * np.pi * 3.0 / WAVELENGTH_UM) * np.exp(-1j * np.pi * WAVELENGTH_UM * 3.0 * (fx**2 + fy**2))
    np.testing.assert_allclose(transfer, expected, atol=1e-5)


# --- Shift theorem -------------------------------------------------------------------------------------------


def test_tilt_only_shifts_the_intensity():
    # E0 = A(x, y) exp(i 2 pi f0 x), f0 = m / (W dx): the Fresnel pattern of A, displaced by lam z f0 along x.
    height, width, cycles, shift_px = 48, 64, 4, 3
    f0_per_um = cycles / (width * PIXEL_SIZE_UM)
    z_um = shift_px * PIXEL_SIZE_UM / (WAVELENGTH_UM * f0_per_um)  # lam z f0 / dx = 3 px
    y_px, x_px = np.mgrid[0:height, 0:width].astype(np.float64)
    # Smooth (band-limited) amplitude, so the tilt does not push its spectrum across Nyquist.
    amplitude = 1.0 + 0.8 * np.exp(-((x_px - 30) ** 2 + (y_px - 20) ** 2) / (2 * 4.0**2))
    tilt = np.exp(2j * np.pi * f0_per_um * x_px * PIXEL_SIZE_UM)
    tilted = np.abs(propagate(amplitude * tilt, z_um).numpy()) ** 2
    untilted = np.abs(propagate(amplitude.astype(np.complex128), z_um).numpy()) ** 2
    np.testing.assert_allclose(tilted, np.roll(untilted, shift_px, axis=-1), atol=1e-10)
    assert np.max(np.abs(tilted - untilted)) > 1e-2  # the shift is visible, so the test can fail


# --- Shapes, dtypes, independent implementation -------------------------------------------------------------


def test_non_square_matches_independent_numpy(rng):
    height, width, z_um = 40, 72, -3.7
    field = _random_field(rng, (2, height, width))
    fx = np.fft.fftfreq(width, d=PIXEL_SIZE_UM)
    fy = np.fft.fftfreq(height, d=PIXEL_SIZE_UM)
    fxx, fyy = np.meshgrid(fx, fy)
    transfer = np.exp(1j * 2 * np.pi * z_um / WAVELENGTH_UM) * np.exp(
        -1j * np.pi * WAVELENGTH_UM * z_um * (fxx**2 + fyy**2)
    )
    expected = np.fft.ifft2(np.fft.fft2(field.astype(np.complex128)) * transfer)
    result = propagate(field, z_um).numpy()
    assert result.shape == (2, height, width) and result.dtype == np.complex64
    np.testing.assert_allclose(result, expected, atol=2e-5)


def test_tensor_parameters_equal_python_floats(rng):
    field = _random_field(rng, (24, 30))
    with_floats = propagate(field, 2.5, 0.6, 0.3).numpy()
    with_tensors = propagate(field, tf.constant(2.5), tf.constant(0.6, tf.float64), tf.constant(0.3)).numpy()
    np.testing.assert_allclose(with_tensors, with_floats, atol=1e-5)


def test_bad_parameters_are_rejected():
    with pytest.raises(InputError):
        propagate(np.ones((8, 8), np.complex64), 1.0, wavelength_um=0.0)
    with pytest.raises(InputError):
        propagate(np.ones((8, 8), np.complex64), 1.0, pad=-1)


# --- Two-shot measurement ------------------------------------------------------------------------------------


def _gaussian_bump(height, width, peak_rad, sigma_px):
    y_px, x_px = np.mgrid[0:height, 0:width].astype(np.float64)
    r2_px2 = (x_px - width // 2) ** 2 + (y_px - height // 2) ** 2
    return peak_rad * np.exp(-r2_px2 / (2 * sigma_px**2)), r2_px2


def test_two_shot_order_and_sign_follow_the_tie():
    # A positive bump phi = a exp(-r^2 / 2 s^2) has laplacian(phi) = phi (r^2 / s^4 - 2 / s^2) < 0 at its centre.
    # TIE for unit amplitude: dI/dz = -laplacian(phi) / k > 0 there, so I(+dz) > I(-dz) at the centre (the bump
    # focuses like a converging lens). Check the sign, and the whole dI/dz map against the TIE's first order.
    dz_um, sigma_px = 0.5, 10.0
    phase, r2_px2 = _gaussian_bump(128, 128, 0.5, sigma_px)
    intensities = two_shot_intensities(phase, defocus_um=dz_um).numpy()
    assert intensities.shape == (128, 128, 2)
    centre = (64, 64)
    assert intensities[centre][1] > intensities[centre][0] + 1e-3
    sigma_um = sigma_px * PIXEL_SIZE_UM
    r2_um2 = r2_px2 * PIXEL_SIZE_UM**2
    laplacian = phase * (r2_um2 / sigma_um**4 - 2 / sigma_um**2)
    tie_dI_dz = -laplacian / (2 * np.pi / WAVELENGTH_UM)
    fresnel_dI_dz = (intensities[..., 1] - intensities[..., 0]) / (2 * dz_um)
    assert _relative_l2(fresnel_dI_dz, tie_dI_dz) < 1e-3  # measured 7e-5: O(dz^2) terms only
    # Swapping the channels makes the comparison fail outright: the order is tested, not assumed.
    assert _relative_l2(-fresnel_dI_dz, tie_dI_dz) > 1.9


def test_uniform_phase_gives_unit_intensity():
    intensities = two_shot_intensities(np.full((2, 20, 28), 1.3, np.float32)).numpy()
    assert intensities.shape == (2, 20, 28, 2) and intensities.dtype == np.float32
    np.testing.assert_allclose(intensities, 1.0, atol=1e-5)


def test_amplitude_scales_intensity():
    phase, _ = _gaussian_bump(32, 40, 1.0, 5.0)
    plain = two_shot_intensities(phase.astype(np.float32)).numpy()
    scaled = two_shot_intensities(phase.astype(np.float32), amplitude=np.float32(2.0)).numpy()
    np.testing.assert_allclose(scaled, 4.0 * plain, rtol=1e-5)


def test_two_shot_batched_equals_single(rng):
    phases = rng.uniform(0, 3, (3, 32, 48)).astype(np.float32)
    batched = two_shot_intensities(phases).numpy()
    for i in range(3):
        np.testing.assert_allclose(batched[i], two_shot_intensities(phases[i]).numpy(), atol=1e-5)


def test_two_shot_in_tf_function_with_unknown_shapes(rng):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    def simulate(phase):
        return two_shot_intensities(phase, defocus_um=tf.constant(1.0))

    for shape in [(2, 32, 48), (1, 40, 24)]:
        phase = rng.uniform(0, 2, shape).astype(np.float32)
        graph = simulate(tf.constant(phase)).numpy()
        np.testing.assert_allclose(graph, two_shot_intensities(phase).numpy(), atol=1e-5)


def test_two_shot_in_tf_data_map(rng):
    phases = rng.uniform(0, 2, (3, 32, 32)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(phases).map(lambda phase: two_shot_intensities(phase))
    for phase, intensities in zip(phases, dataset):
        np.testing.assert_allclose(intensities.numpy(), two_shot_intensities(phase).numpy(), atol=1e-5)


def test_mirror_boundary_continues_the_object_as_its_mirror_image():
    # A bump centred on the corner's half-sample point, cut by the crop: its even extension is the whole bump, so
    # with boundary="mirror" dI/dz must follow the TIE's first order of the uncut bump over the entire crop. The
    # periodic simulation instead joins the cut edges with a phase jump (the wrap-around no microscope sees).
    dz_um, sigma_px, size = 0.5, 8.0, 64
    y_px, x_px = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    r2_um2 = (x_px**2 + y_px**2) * PIXEL_SIZE_UM**2
    sigma_um = sigma_px * PIXEL_SIZE_UM
    phase = 0.5 * np.exp(-r2_um2 / (2 * sigma_um**2))
    tie_dI_dz = -phase * (r2_um2 / sigma_um**4 - 2 / sigma_um**2) / (2 * np.pi / WAVELENGTH_UM)
    errors = {}
    for boundary in ("mirror", "periodic"):
        intensities = two_shot_intensities(phase, defocus_um=dz_um, boundary=boundary).numpy()
        assert intensities.shape == (size, size, 2)
        errors[boundary] = _relative_l2((intensities[..., 1] - intensities[..., 0]) / (2 * dz_um), tie_dI_dz)
    assert errors["mirror"] < 1e-3, errors  # measured 1.8e-4: O(dz^2) terms only
    assert errors["periodic"] > 0.1, errors


def test_unknown_boundary_is_rejected():
    with pytest.raises(InputError, match="boundary"):
        two_shot_intensities(np.zeros((8, 8), np.float32), boundary="reflect")
