"""Through-focus stacks: simulation, the polynomial fit of I(z), the reference phase, plane choice, TIFF reading."""

import numpy as np
import pytest
import tifffile
from skimage.filters import gaussian

from cvdm_tf.data.phantoms import cell_phantom
from cvdm_tf.data.stacks import read_stack
from cvdm_tf.errors import InputError
from cvdm_tf.physics.fresnel import two_shot_intensities
from cvdm_tf.physics.through_focus import (
    fit_derivative,
    focus_index,
    reference_phase,
    simulate_stack,
    two_shot_planes,
)
from cvdm_tf.physics.tie import tune_regularization

SIZE_PX = 128
Z_STEP_UM = 0.5
Z_UM = (np.arange(41) - 20) * Z_STEP_UM  # 41 planes, -10 .. 10 um, focus at index 20
FOCUS = 20
DEFOCUS_UM = 1.0  # the 2-shot pair, as in the synthetic experiment
NOISE_SD = 0.005  # per plane, in units of the background intensity (1): SNR 200, a well-exposed camera


def _offset_free(phase):
    return phase - phase.mean(axis=(-2, -1), keepdims=True)


def _mae(estimate, truth):
    return float(np.mean(np.abs(_offset_free(np.asarray(estimate, np.float64)) - _offset_free(truth))))


def _slope(estimate, truth):
    """Least-squares scale of the estimate on the truth (offset-free): 1 for a right phase, 0.5 for half of it."""
    truth = _offset_free(np.asarray(truth, np.float64)).ravel()
    return float(np.dot(_offset_free(np.asarray(estimate, np.float64)).ravel(), truth) / np.dot(truth, truth))


def _mirror(image):
    image = np.concatenate([image, image[..., ::-1]], axis=-1)
    return np.concatenate([image, image[..., ::-1, :]], axis=-2)


def _camera_stack(phase, amplitude, z_um, rng, noise_sd=NOISE_SD):
    """A camera crop's through-focus stack: the object mirrored to 2N x 2N, propagated (periodic), cropped to N x N.

    The crop is not periodic (cells cross its edges, as in a real field of view), and mirroring makes the light
    crossing the edges what reflective (Neumann) boundaries assume, so every solver is judged on the physics and
    not on wrap-around artefacts of the simulation. Then Gaussian noise, sd `noise_sd`, on every plane.
    """
    size = phase.shape[-1]
    stack = simulate_stack(_mirror(phase), None if amplitude is None else _mirror(amplitude), z_um)
    stack = stack[:, :size, :size].astype(np.float64)
    return stack + noise_sd * rng.normal(size=stack.shape)


def _absorbing_cells(size, seed, peak_rad=2.5, absorption=0.4):
    """cell_phantom phase (0..peak) and an amplitude that follows the cells smoothly: 1 - absorption .. 1."""
    phase = cell_phantom(size, np.random.default_rng(seed), peak=peak_rad).astype(np.float64)
    density = gaussian(phase, sigma=2.0)
    return phase, 1.0 - absorption * density / density.max()


@pytest.fixture(scope="module")
def absorbing_stack():
    """41 planes of a 128 px absorbing cell phantom (amplitude 0.6..1), noise sd 0.005; focus at plane 20."""
    phase, amplitude = _absorbing_cells(SIZE_PX, seed=0)
    stack = _camera_stack(phase, amplitude, Z_UM, np.random.default_rng(1))
    return phase, amplitude, stack


# --- Simulation ------------------------------------------------------------------------------------------------


def test_simulate_stack_matches_two_shot_and_focus(rng):
    phase = rng.uniform(0, 2, (32, 48))
    amplitude = rng.uniform(0.5, 1.0, (32, 48))
    stack = simulate_stack(phase, amplitude, [-1.5, 0.0, 1.5])
    assert stack.shape == (3, 32, 48) and stack.dtype == np.float64
    np.testing.assert_allclose(stack[1], amplitude**2, atol=1e-12)  # z = 0 is the object plane
    pair = two_shot_intensities(phase, defocus_um=1.5, amplitude=amplitude).numpy()
    np.testing.assert_allclose(stack[[0, 2]], np.moveaxis(pair, -1, 0), atol=1e-12)
    assert simulate_stack(phase.astype(np.float32), None, [0.5]).dtype == np.float32


# --- The fit ----------------------------------------------------------------------------------------------------


def test_fit_derivative_is_exact_on_polynomial_intensity(rng):
    # I(z) a per-pixel cubic on uneven, decreasing plane positions: a fit of order >= 3 reproduces it exactly.
    z_um = np.array([6.0, 4.5, 3.9, 2.0, 0.7, -0.4, -1.0, -2.5, -4.0])
    coefficients = rng.normal(size=(4, 5, 7)) * np.array([1.0, 0.1, 0.01, 0.001])[:, None, None]
    coefficients[0] += 2.0
    stack = sum(c * z_um[:, None, None] ** j for j, c in enumerate(coefficients))
    for order in (3, 5, 8):
        for focus in (0, 4, 8):
            z_f = z_um[focus]
            in_focus, d_intensity_dz, residual = fit_derivative(stack, z_um, order=order, focus=focus)
            expected_value = sum(c * z_f**j for j, c in enumerate(coefficients))
            expected_slope = sum(j * c * z_f ** (j - 1) for j, c in enumerate(coefficients) if j)
            np.testing.assert_allclose(in_focus, expected_value, rtol=0, atol=1e-11)
            np.testing.assert_allclose(d_intensity_dz, expected_slope, rtol=0, atol=1e-11)
            assert residual.max() < 1e-11
    # A quadratic cannot follow a cubic, and the residual says so.
    _, _, residual_2 = fit_derivative(stack, z_um, order=2, focus=4)
    assert residual_2.mean() > 1e-4


def test_fit_derivative_accepts_a_scalar_step_and_picks_the_focus(absorbing_stack):
    _, _, stack = absorbing_stack
    from_positions = fit_derivative(stack, Z_UM, focus=FOCUS)
    from_step = fit_derivative(stack, Z_STEP_UM, focus=FOCUS)  # planes at 0, 0.5, ... : only differences matter
    for a, b in zip(from_positions, from_step):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # The residual adds what an order-6 polynomial misses of I(z) over +-10 um (median 0.0067 without noise) to
    # the noise (measured median 0.0081).
    assert NOISE_SD < float(np.median(from_positions[2])) < 2 * NOISE_SD


def test_fit_residual_is_the_noise_on_a_flat_stack(rng):
    # I(z) constant plus noise: the residual RMS over Z planes is sd * sqrt(1 - (order + 1) / Z) on average.
    stack = 1.0 + NOISE_SD * rng.normal(size=(41, 32, 32))
    for order in (2, 8, 20):
        _, d_intensity_dz, residual = fit_derivative(stack, Z_UM, order=order, focus=FOCUS)
        expected = NOISE_SD * np.sqrt(1 - (order + 1) / 41)
        assert float(np.sqrt(np.mean(residual**2))) == pytest.approx(expected, rel=0.03)
        assert abs(float(d_intensity_dz.mean())) < 3 * float(d_intensity_dz.std()) / 32


# --- The reference phase against 2-shot TIE --------------------------------------------------------------------


def test_reference_phase_recovers_absorbing_phantom(absorbing_stack):
    phase, amplitude, stack = absorbing_stack
    assert 0.59 < amplitude.min() < 0.61 and amplitude.max() == pytest.approx(1.0)
    estimate, residual = reference_phase(stack, Z_UM, focus=FOCUS)
    assert estimate.shape == residual.shape == (SIZE_PX, SIZE_PX) and estimate.dtype == np.float32
    assert abs(float(estimate.mean())) < 1e-5
    # Measured 0.011 rad (0.0075-0.013 over two phantoms x three noise draws; 0.005-0.008 without noise). The
    # issue asks for 0.05 rad at 512 px: benchmarks/reference_phase_speed.py measures that.
    assert _mae(estimate, phase) < 0.05
    assert abs(_slope(estimate, phase) - 1.0) < 0.03


def test_reference_phase_beats_every_two_shot_tie(absorbing_stack):
    phase, _, stack = absorbing_stack
    before, after = two_shot_planes(Z_UM, DEFOCUS_UM, FOCUS)
    assert (before, after) == (18, 22)
    pair = np.stack([stack[before], stack[after]], axis=-1)
    candidates = np.logspace(-12, -2, 6)  # each 2-shot solver at its own best weight, chosen knowing the truth
    two_shot = {
        solver: min(tune_regularization(pair, phase, solver, candidates, defocus_um=DEFOCUS_UM)[1].values())
        for solver in ("fft", "dct", "us")
    }
    reference = _mae(reference_phase(stack, Z_UM, focus=FOCUS)[0], phase)
    # Measured: reference 0.011 rad; 2-shot FFT 0.066, DCT 0.063, US 0.022. Over two phantoms x three noise
    # draws: reference 0.0075-0.013, US 0.020-0.046, FFT 0.061-0.12, DCT 0.055-0.075.
    assert all(reference < 0.8 * error for error in two_shot.values()), (reference, two_shot)
    # US-TIE handles the absorption the uniform-intensity solvers read as phase.
    assert two_shot["us"] < 0.6 * two_shot["fft"] and two_shot["us"] < 0.6 * two_shot["dct"], two_shot


@pytest.fixture(scope="module")
def blob_absorber_stack():
    """The phase of `absorbing_stack` (cell_phantom seed 0) behind an absorber that does not follow it: two Gaussian
    blobs (sigma 16 and 14 px, amplitude 0.5..1) centred between the cells, their tails over the cells' edges. An
    amplitude that is a function of the phase (as `_absorbing_cells`') makes I grad phi a gradient, which Teague's
    solution inverts exactly; these blobs do not."""
    phase = cell_phantom(SIZE_PX, np.random.default_rng(0), peak=2.5).astype(np.float64)
    y_px, x_px = np.mgrid[0:SIZE_PX, 0:SIZE_PX].astype(np.float64)
    blobs = sum(np.exp(-((y_px - cy) ** 2 + (x_px - cx) ** 2) / (2 * sigma**2)) for cy, cx, sigma in
                ((36, 60, 16), (100, 90, 14)))
    amplitude = 1.0 - 0.5 * blobs / blobs.max()
    return phase, amplitude, _camera_stack(phase, amplitude, Z_UM, np.random.default_rng(1))


def test_reference_phase_corrects_teague_with_its_default_iterations(blob_absorber_stack):
    """The through-focus reference with its default US-TIE iterations against Teague's solution alone (0
    iterations), on an absorber that does not follow the cells. Measured: 0.0116 rad against 0.0360 (3.1x); without
    noise 0.0085 against 0.0383."""
    phase, amplitude, stack = blob_absorber_stack
    assert amplitude.min() == pytest.approx(0.5, abs=0.01)
    default = _mae(reference_phase(stack, Z_UM, focus=FOCUS)[0], phase)
    teague = _mae(reference_phase(stack, Z_UM, focus=FOCUS, iterations=0)[0], phase)
    assert default < 0.015
    assert default < teague / 2, (default, teague)


def test_wrong_z_spacing_scales_the_phase(absorbing_stack):
    # dI/dz = (fitted slope in t) / (half-range in um): a spacing given 2x too large halves dI/dz, and US-TIE is
    # linear in dI/dz, so the phase comes out at exactly half its size; 2x too small doubles it. This is the
    # error a wrong PhysicalSizeZ or ImageJ spacing causes (nothing in the stack itself can reveal it).
    phase, _, stack = absorbing_stack
    right, _ = reference_phase(stack, Z_UM, focus=FOCUS)
    too_wide, _ = reference_phase(stack, 2 * Z_UM, focus=FOCUS)
    too_narrow, _ = reference_phase(stack, 0.5 * Z_UM, focus=FOCUS)
    np.testing.assert_allclose(too_wide, 0.5 * right, atol=1e-5)
    np.testing.assert_allclose(too_narrow, 2.0 * right, atol=1e-5)
    assert _slope(too_wide, phase) == pytest.approx(0.5, abs=0.02)
    assert _slope(too_narrow, phase) == pytest.approx(2.0, abs=0.05)
    # The error is then the phase itself times 0.5 (too wide) or 1 (too narrow): measured 0.175 and 0.350 rad
    # MAE, mean |phase| 0.350 rad, against 0.011 with the right spacing.
    mean_phase = float(np.mean(np.abs(_offset_free(phase))))
    assert _mae(too_wide, phase) == pytest.approx(0.5 * mean_phase, rel=0.1)
    assert _mae(too_narrow, phase) == pytest.approx(mean_phase, rel=0.1)


# --- Choosing planes ---------------------------------------------------------------------------------------------


def test_focus_index_finds_the_contrast_minimum():
    rng = np.random.default_rng(2)
    phase, _ = _absorbing_cells(64, seed=3)
    z_um = (np.arange(21) - 8) * Z_STEP_UM  # focus at plane 8, off-centre
    assert focus_index(_camera_stack(phase, None, z_um, rng)) == 8
    # A weak absorber (amplitude 0.9..1, unstained cells) moves the minimum by at most a plane; measured: 0-1.
    _, amplitude = _absorbing_cells(64, seed=3, absorption=0.1)
    assert abs(focus_index(_camera_stack(phase, amplitude, z_um, rng)) - 8) <= 1


def test_focus_index_misses_strong_absorbers(absorbing_stack):
    # Documented limit: amplitude 0.6..1 keeps contrast in focus and the minimum drifts (measured: plane 29,
    # 4.5 um off); such stacks need `focus=` given.
    _, _, stack = absorbing_stack
    assert abs(focus_index(stack) - FOCUS) > 2


def test_two_shot_planes():
    assert two_shot_planes(Z_UM, 1.0, FOCUS) == (18, 22)
    assert two_shot_planes(Z_UM, 0.9, FOCUS) == (18, 22)  # nearest planes
    assert two_shot_planes(Z_UM[::-1], 1.0, FOCUS) == (22, 18)  # a stack acquired downwards
    assert two_shot_planes(Z_UM, 10.0, FOCUS) == (0, 40)
    for defocus_um, focus in [(10.5, FOCUS), (1.0, 1), (0.2, FOCUS), (0.0, FOCUS), (float("nan"), FOCUS)]:
        with pytest.raises(InputError):
            two_shot_planes(Z_UM, defocus_um, focus)
    with pytest.raises(InputError):
        two_shot_planes(Z_UM, 1.0, 41)


# --- Bad input ---------------------------------------------------------------------------------------------------


def test_fit_rejects_bad_stacks(rng):
    stack = 1.0 + 0.1 * rng.normal(size=(9, 8, 8))
    cases = [
        (dict(stack=stack, z_um=0.5, order=9), "needs at least 10"),  # fewer planes than order + 1
        (dict(stack=stack[:1], z_um=0.5), "at least 2 planes"),
        (dict(stack=stack, z_um=0.0), "non-zero"),
        (dict(stack=stack, z_um=float("nan")), "non-zero"),
        (dict(stack=stack, z_um=np.r_[0.0, 0.0, np.arange(2, 9.0)]), "step of 0"),
        (dict(stack=stack, z_um=np.r_[np.nan, np.arange(1, 9.0)]), "finite"),
        (dict(stack=stack, z_um=np.arange(8.0)), "8 positions for 9 planes"),
        (dict(stack=[stack[0], stack[1], stack[2][:, :7]], z_um=0.5), "different shapes"),
        (dict(stack=stack[0], z_um=0.5), "[Z, H, W]"),
        (dict(stack=np.where(stack > 1.2, np.nan, stack), z_um=0.5), "NaN"),
        (dict(stack=stack, z_um=0.5, focus=9), "plane index"),
        (dict(stack=stack, z_um=0.5, order=0), "order"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            fit_derivative(**kwargs)


# --- Reading stacks from TIFF --------------------------------------------------------------------------------------


@pytest.fixture
def planes(rng):
    return rng.uniform(0.5, 1.5, (5, 16, 24)).astype(np.float32)


def test_read_imagej_stack_with_spacing(tmp_path, planes):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, planes, imagej=True, metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    stack, z_step_um = read_stack(path)
    assert stack.dtype == np.float32 and z_step_um == 0.5
    np.testing.assert_array_equal(stack, planes)
    tifffile.imwrite(path, planes, imagej=True, metadata={"spacing": 250.0, "unit": "nm", "axes": "ZYX"})
    assert read_stack(path)[1] == pytest.approx(0.25)


def test_read_ome_stack_with_physical_size_z(tmp_path, planes):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, planes, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.5})
    stack, z_step_um = read_stack(path)
    assert z_step_um == 0.5
    np.testing.assert_array_equal(stack, planes)
    # A singleton channel axis is dropped; OME units are honoured.
    metadata = {"axes": "CZYX", "PhysicalSizeZ": 400.0, "PhysicalSizeZUnit": "nm"}
    tifffile.imwrite(path, planes[np.newaxis], ome=True, metadata=metadata)
    stack, z_step_um = read_stack(path)
    assert stack.shape == planes.shape and z_step_um == pytest.approx(0.4)


def test_read_plain_stack_has_no_spacing(tmp_path, planes):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, (planes * 1000).astype(np.uint16))
    stack, z_step_um = read_stack(path)
    assert stack.shape == planes.shape and stack.dtype == np.float32 and z_step_um is None


def test_read_stack_errors(tmp_path, planes):
    cases = {}
    cases["image.tif"] = "not a z-stack"
    tifffile.imwrite(tmp_path / "image.tif", planes[0])
    cases["nan.tif"] = "NaN"
    tifffile.imwrite(tmp_path / "nan.tif", np.where(planes > 1.4, np.nan, planes))
    cases["rgb.tif"] = "colour"
    tifffile.imwrite(tmp_path / "rgb.tif", (planes[:3].transpose(1, 2, 0) * 100).astype(np.uint8), photometric="rgb")
    cases["junk.tif"] = "not a readable TIFF"
    (tmp_path / "junk.tif").write_bytes(b"this is not a TIFF file")
    cases["missing.tif"] = "no such file"
    for name, message in cases.items():
        with pytest.raises(InputError, match=message) as error:
            read_stack(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)


# === The QPI task and CLI on a simulated z-stack ===


def _absorbing_stack(tmp_path, size=64, planes=21, step=0.25):
    phase, amplitude = _absorbing_cells(size, seed=4, absorption=0.2)
    z = (np.arange(planes) - planes // 2) * step
    stack = _camera_stack(phase, amplitude, z, np.random.default_rng(5), noise_sd=0.002).astype(np.float32)
    path = tmp_path / "stack.tif"
    # The metadata states what simulate_stack used (0.21 um pixels): with unit "um" and no resolution ImageJ
    # would read 1 um pixels, outside the QPI model's range.
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.21, 1 / 0.21),
                     metadata={"axes": "ZYX", "spacing": step, "unit": "um"})
    return path, phase, planes // 2


def test_the_qpi_task_reads_the_pair_of_a_z_stack_and_says_which_planes(tmp_path):
    from cvdm_tf.tasks import make_task

    path, _, focus = _absorbing_stack(tmp_path)
    said = []
    task = make_task("qpi")
    [pair] = task.read_measurements(path, message=said.append, focus=focus)  # z spacing from the metadata
    assert pair.shape == (64, 64, 2)
    assert "pair = planes 6 and 14" in said[0] and "defocus 1 um" in said[0]
    [case] = task.eval_cases(path, "none", 0, z_step_um=0.25, focus=focus)
    assert case.truth.shape == (64, 64)
    with pytest.raises(InputError, match="0.75 um from focus"):
        task.eval_cases(path, "none", 0, z_step_um=0.25, focus=focus, defocus_um=0.8)


def test_reference_phase_command_writes_phase_and_residual(tmp_path):
    import tifffile
    from click.testing import CliRunner

    from cvdm_tf import metrics
    from cvdm_tf.cli.main import main

    path, phase, _ = _absorbing_stack(tmp_path, planes=41)
    out = tmp_path / "ref"
    result = CliRunner().invoke(main, ["reference-phase", "--input", str(path), "--out", str(out),
                                       "--focus-plane", "20"])
    assert result.exit_code == 0, result.output
    estimate = tifffile.imread(out / "stack_phase.tif")
    assert metrics.mae(*metrics.offset_free(estimate, phase)) < 0.05
    assert tifffile.imread(out / "stack_fit_residual.tif").shape == (64, 64)
    result = CliRunner().invoke(main, ["reference-phase", "--input", str(path), "--out", str(tmp_path / "x"),
                                       "--z-step", "0"])
    assert result.exit_code == 2 and "z" in result.output and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_infer_takes_a_z_stack_and_says_which_planes_it_used(tiny_run, tmp_path):
    import tifffile
    from click.testing import CliRunner

    from cvdm_tf import io
    from cvdm_tf.cli.main import main

    path, _, focus = _absorbing_stack(tmp_path, size=32)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(path), "--out", str(out),
                                       "--task", "qpi", "--focus-plane", str(focus), "--samples", "2",
                                       "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "pair = planes 6 and 14" in result.output
    assert tifffile.imread(out / "stack_mean.tif").shape == (32, 32)
    assert io.tiff_pixel_size_um(out / "stack_mean.tif") == pytest.approx(0.21)
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(path), "--out",
                                       str(tmp_path / "o2"), "--z-step", "0"])
    assert result.exit_code == 2 and "z step must be > 0" in result.output
