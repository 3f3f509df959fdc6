"""Through-focus stacks: simulation, the per-pixel polynomial fit of I(z), and the reference phase it drives.

The paper's QPI "in the wild" experiment (cvdm-paper.txt section 4.2.2) takes real brightfield z-stacks and
builds its ground truth the way Waller et al. 2010 ("Transport of intensity phase-amplitude imaging with higher
order intensity derivatives", Opt. Express 18, 12552) do: fit a polynomial in z to every pixel's I(z) over many
planes (41 planes, z = n dz with n = -20..20, order 20 in the paper), take its z-derivative at focus, and solve
the TIE with non-uniform intensity (US-TIE, `tie.tie_us_from_derivative`). Every method is then run 2-shot on
the planes at -dz and +dz of the same stack and scored against that reference.

    I(z; x, y) ~= sum_j c_j(x, y) P_j(t),  t = (z - z_c) / h,  z_c, h: centre and half-range of the stack  (TF.1)
    dI/dz(z_f) = sum_j c_j P_j'(t_f) / h                                                                (TF.2)
    -k dI/dz(z_f) = div( I(z_f) grad phi )                                                            (6.4)

P_j are Legendre polynomials (numpy.polynomial.legendre): on t in [-1, 1] the design matrix of an order-20 fit
is well conditioned (the monomials z^j of a 41-plane stack are not: condition number ~1e14 for order 20).

Why the derivative of a many-plane fit beats the 2-shot difference (I(+dz) - I(-dz)) / 2 dz: the fit averages
the noise of all planes, and the high-order terms absorb the nonlinearity of I(z) that biases a finite
difference. The price is bias when the order is too low for the z-range (I(z) far from focus is not a
low-order polynomial) and noise when it is too high. The default order, min(planes - 1, 6), was measured on
41-plane stacks of absorbing cell phantoms (see `fit_derivative`).

Notation (lengths in micrometres):

    symbol       code name        units
    z            z_um             um (plane positions; only differences matter)
    z_f          focus            index of the in-focus plane
    I(z)         stack            intensity unit (any)
    dI/dz        d_intensity_dz   intensity unit / um
    lam, dx      wavelength_um, pixel_size_um
    phi          phase            rad
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from numpy.polynomial import legendre

from cvdm_tf.errors import InputError
from cvdm_tf.physics.fresnel import propagate, transmittance
from cvdm_tf.physics.tie import tie_us_from_derivative

__all__ = [
    "DEFAULT_MAX_ORDER",
    "simulate_stack",
    "fit_derivative",
    "reference_phase",
    "focus_index",
    "two_shot_planes",
]

#: The default fit order is min(planes - 1, DEFAULT_MAX_ORDER); see `fit_derivative` for the measurement.
DEFAULT_MAX_ORDER = 6


# === Simulation ===


def simulate_stack(phase, amplitude, z_um, wavelength_um=0.521, pixel_size_um=0.21, pad=0):
    """Intensities of the thin object amplitude * exp(i phase) propagated to each z, eqs. (6.1)-(6.3).

    Steps:
      1. E_0 = A exp(i phi) (complex128 for a float64 phase, else complex64).
      2. For each z: E_z = `fresnel.propagate(E_0, z, ...)`; I_z = |E_z|^2.

    Args:
      phase: float array [H, W]. phi in rad.
      amplitude: float array broadcastable to [H, W], or None for 1. A, the amplitude transmission.
      z_um: sequence of floats. Plane positions in um relative to the object plane (z = 0 is in focus).
      wavelength_um, pixel_size_um, pad: as `fresnel.propagate` (pad > 0: non-periodic propagation).

    Returns:
      np.ndarray [Z, H, W], float32 (float64 for a float64 phase): I(z).
    """
    field = transmittance(phase, amplitude)
    planes = []
    for z in np.asarray(z_um, dtype=np.float64).ravel():
        propagated = propagate(field, float(z), wavelength_um, pixel_size_um, pad=pad)
        planes.append(tf.math.real(propagated) ** 2 + tf.math.imag(propagated) ** 2)
    return tf.stack(planes).numpy()


# === Checking a stack ===


def _as_stack(stack):
    """[Z, H, W] float64 from an array or a sequence of planes; InputError for anything else."""
    if isinstance(stack, (list, tuple)):
        shapes = {np.shape(plane) for plane in stack}
        if len(shapes) > 1:
            raise InputError(f"stack: planes have different shapes {sorted(shapes)}; all must be H x W")
    array = np.asarray(stack, dtype=np.float64)
    if array.ndim != 3:
        raise InputError(f"stack: expected planes [Z, H, W], got an array of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"stack: {int(np.size(array) - np.isfinite(array).sum())} pixels are NaN or infinite")
    return array


def _z_positions(z_um, planes):
    """[Z] plane positions from positions or a scalar step; InputError for steps that are 0, NaN or mixed signs."""
    z = np.asarray(z_um, dtype=np.float64)
    if z.ndim == 0:
        if not np.isfinite(z) or z == 0:
            raise InputError(f"z_um: the z step must be a finite non-zero number of um, got {float(z)}")
        return np.arange(planes) * float(z)
    if z.shape != (planes,):
        raise InputError(f"z_um: {z.size} positions for {planes} planes")
    if not np.all(np.isfinite(z)):
        raise InputError("z_um: positions must be finite numbers (got NaN or infinity)")
    steps = np.diff(z)
    if planes > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        raise InputError("z_um: positions must strictly increase or decrease (a z step of 0 or a reversal)")
    return z


def _check_index(index, planes, name):
    if int(index) != index or not 0 <= index < planes:
        raise InputError(f"{name} must be a plane index in 0..{planes - 1}, got {index}")
    return int(index)


# === The fit ===


def fit_derivative(stack, z_um, order=None, focus=None):
    """Per-pixel least-squares polynomial fit of I(z); its value and z-derivative at focus, eqs. (TF.1)-(TF.2).

    Steps:
      1. t = (z - z_c) / h, z_c and h the centre and half-range of the plane positions, so t spans [-1, 1].
      2. Design matrix V[i, j] = P_j(t_i) (Legendre), [Z, order + 1]; one `numpy.linalg.lstsq(V, Y)` with the
         right side Y = stack reshaped [Z, H * W] fits every pixel at once.
      3. At t_f (the focus plane): I = sum_j c_j P_j(t_f); dI/dz = sum_j c_j P_j'(t_f) / h.
      4. Residual: RMS over z of the data minus the fit, per pixel.

    Default order, min(planes - 1, 6) (`DEFAULT_MAX_ORDER`). The derivative of a high-order fit follows I(z)
    better (less bias) but carries more noise, and the TIE's inverse Laplacian amplifies the noise's low
    frequencies, more so on larger images. Measured: offset-free MAE in rad of `reference_phase` (regularization
    1e-9) on 41-plane stacks of 512 px absorbing cell phantoms (amplitude 0.6..1), focus in the middle, intensity
    noise sd per plane as a fraction of the background:

        z step   noise     order 4   order 6        order 8        order 12   order 20
        0.5 um   none      0.015     0.013-0.017    0.012-0.016    0.015      0.014
        0.5 um   0.005     0.023     0.017-0.028    0.018-0.024    0.036      0.053
        0.5 um   0.01      0.033     0.022-0.049    0.032-0.048    0.078      0.106
        1.0 um   0.01      0.031     0.024          0.023
        0.25 um  0.01      0.041     0.036          0.065

    Order 6 is within 1.5x of the best order in every case; the paper's order 20 pays for its lower bias only
    on nearly noise-free stacks. On a stack symmetric about the focus plane the odd and even terms decouple, so
    order 2m and 2m - 1 give the same derivative there.

    Args:
      stack: float array [Z, H, W] or a sequence of Z planes [H, W]. I(z).
      z_um: float (the z step in um, planes at 0, step, 2 step, ...) or [Z] plane positions in um. Only
        differences matter; a negative step (a stack acquired downwards) flips the sign of dI/dz.
      order: int >= 1, or None for min(planes - 1, DEFAULT_MAX_ORDER).
      focus: int, the in-focus plane index; None picks it with `focus_index(stack)`.

    Returns:
      (in_focus, d_intensity_dz, residual): float64 arrays [H, W]: the fitted I at focus, dI/dz at focus in
      intensity units / um, and the RMS fit residual in intensity units.

    Raises:
      InputError: not a [Z, H, W] stack, planes of different sizes, NaN pixels, a z step of 0 or NaN, fewer
        planes than order + 1, a focus index outside the stack.
    """
    stack = _as_stack(stack)
    planes, height, width = stack.shape
    if planes < 2:
        raise InputError(f"stack: {planes} plane; a fit of I(z) needs at least 2 planes")
    z = _z_positions(z_um, planes)
    if order is None:
        order = min(planes - 1, DEFAULT_MAX_ORDER)
    if int(order) != order or order < 1:
        raise InputError(f"order must be an integer >= 1, got {order}")
    order = int(order)
    if planes < order + 1:
        raise InputError(f"stack: {planes} planes, but a polynomial fit of order {order} needs at least {order + 1}")
    focus = focus_index(stack) if focus is None else _check_index(focus, planes, "focus")

    # 1. Centred, scaled z.
    centre, half_range = 0.5 * (z.max() + z.min()), 0.5 * (z.max() - z.min())
    t = (z - centre) / half_range
    # 2. One least-squares solve for all pixels.
    design = legendre.legvander(t, order)
    values = stack.reshape(planes, height * width)
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    # 3. Value and derivative at focus: rows of P_j(t_f) and P_j'(t_f).
    value_row = legendre.legvander(t[focus : focus + 1], order)[0]
    derivative_row = legendre.legval(t[focus], legendre.legder(np.eye(order + 1), axis=0))
    in_focus = value_row @ coefficients
    d_intensity_dz = derivative_row @ coefficients / half_range
    # 4. RMS residual over z.
    residual = np.sqrt(np.mean((values - design @ coefficients) ** 2, axis=0))
    shape = (height, width)
    return in_focus.reshape(shape), d_intensity_dz.reshape(shape), residual.reshape(shape)


def reference_phase(
    stack,
    z_um,
    wavelength_um=0.521,
    pixel_size_um=0.21,
    order=None,
    regularization=1e-9,
    focus=None,
    iterations=10,
):
    """The through-focus reference phase: the fit's I and dI/dz at focus into US-TIE (Waller 2010 + Zhang 2020).

    Steps:
      1. (I0, dI/dz, residual) = `fit_derivative(stack, z_um, order, focus)`.
      2. phi = `tie_us_from_derivative(I0, dI/dz, wavelength_um, pixel_size_um, regularization, iterations)`.

    The default regularization, 1e-9 (cut-off period ~1100 px), is far lighter than the 2-shot solvers' 1e-6:
    the fit's derivative averages the noise of all planes. Measured at 512 px (table in `fit_derivative`, order
    6): 1e-10 is better on clean stacks (0.004-0.005 rad against 0.013 without noise) and worse on noisy ones
    (0.036-0.070 against 0.028-0.049 at sd 0.005-0.01); at 128 px the choice between 1e-12 and 1e-9 changes
    the MAE by < 0.001 rad.

    `focus=None` finds the focus by minimum contrast (`focus_index`), which is right for weakly absorbing
    objects only: give the focus plane for stained or strongly absorbing samples.

    Args:
      stack, z_um, order, focus: as `fit_derivative`.
      wavelength_um, pixel_size_um: lam and dx in um.
      regularization: Tikhonov weight in rad^4 / px^4 (tie.py's module docstring).
      iterations: conjugate-gradient iterations of US-TIE.

    Returns:
      (phase, residual): float32 arrays [H, W]: phi in rad (zero-mean) and the fit's RMS residual.
    """
    in_focus, d_intensity_dz, residual = fit_derivative(stack, z_um, order=order, focus=focus)
    if not in_focus.mean() > 0:
        raise InputError("stack: the fitted in-focus intensity has mean <= 0; US-TIE needs raw intensities")
    phase = tie_us_from_derivative(
        in_focus, d_intensity_dz, wavelength_um, pixel_size_um, regularization, iterations=iterations
    )
    return phase.numpy().astype(np.float32), residual.astype(np.float32)


def reference_phase_file(path, out_dir, z_step_um=None, order=None, planes=None, focus=None, wavelength_um=0.521,
                         pixel_size_um=0.21):
    """`cvdm-tf reference-phase`: the reference phase of the z-stack in `path`, written (atomically, nothing on
    failure) as OUT/NAME_phase.tif (radians) and OUT/NAME_fit_residual.tif. Returns (phase path, residual path,
    a sentence saying what was used)."""
    from pathlib import Path

    from cvdm_tf import io
    from cvdm_tf.data.stacks import read_stack

    stack, stored = read_stack(path)
    step = z_step_um if z_step_um is not None else stored
    if step is None:
        raise InputError(f"{path}: no z spacing in the file's metadata; give --z-step")
    if not (np.isfinite(step) and step > 0):
        raise InputError(f"{path}: z step must be > 0 um, got {step}")
    z = np.arange(len(stack)) * step
    focus = focus_index(stack) if focus is None else _check_index(focus, len(stack), "focus")
    if planes is not None and planes < len(stack):
        first = int(np.clip(focus - planes // 2, 0, len(stack) - planes))
        stack, z, focus = stack[first:first + planes], z[first:first + planes], focus - first
    try:
        phase, residual = reference_phase(stack, z, wavelength_um, pixel_size_um, order=order, focus=focus)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    name = Path(path).stem
    out_dir = Path(out_dir)
    written = (io.write_tiff(out_dir / f"{name}_phase.tif", phase, pixel_size_um=pixel_size_um),
               io.write_tiff(out_dir / f"{name}_fit_residual.tif", residual, pixel_size_um=pixel_size_um))
    fit = order or min(len(stack) - 1, DEFAULT_MAX_ORDER)
    return (*written, f"{len(stack)} planes {step:g} um apart, focus plane {focus}, fit order {fit}")


# === Choosing planes ===


def focus_index(stack):
    """The in-focus plane of a (mostly) phase object: the plane of minimum normalised variance std(I) / mean(I).

    A pure phase object is invisible in focus (uniform intensity) and gains contrast on either side, linearly
    in |z| to first order (TIE), so the in-focus plane is the contrast minimum; dividing by the mean makes the
    criterion blind to illumination drift along the stack. An absorbing object keeps contrast in focus, and
    where the absorber sits on the phase (cells that absorb where they are thick) the defocus terms correlate
    with it and shift the minimum. Measured on 41-plane, 0.5 um-step stacks of 128 px cell phantoms (noise sd
    0.01): pure phase and amplitude 0.95..1: exact; amplitude 0.9..1: 0-1 plane off; 0.8..1: 1-2 planes;
    0.6..1: 9-13 planes (4.5-6.5 um). For anything but weak absorbers (unstained cells in brightfield), give
    the focus plane instead.

    Args:
      stack: float array [Z, H, W] or a sequence of planes.

    Returns:
      int: the plane index.
    """
    stack = _as_stack(stack)
    means = stack.mean(axis=(1, 2))
    if not np.all(means > 0):
        raise InputError("stack: a plane has mean intensity <= 0; cannot normalise its contrast")
    return int(np.argmin(stack.std(axis=(1, 2)) / means))


def two_shot_planes(z_um, defocus_um, focus):
    """The planes nearest to z_f - dz and z_f + dz: where a 2-shot method reads its pair from a stack.

    Args:
      z_um: [Z] plane positions in um (or a scalar step; then `planes` is not known, so pass positions).
      defocus_um: float > 0. dz in um.
      focus: int. The in-focus plane index.

    Returns:
      (before, after): plane indices, z[before] nearest to z_f - dz and z[after] nearest to z_f + dz. The
      defocus actually used is (z[after] - z[before]) / 2; it equals dz when dz is a multiple of the step.

    Raises:
      InputError: dz not > 0, z_f +- dz outside the stack (by more than half a step), or dz smaller than half
        a step (both planes would be the focus plane).
    """
    z = np.asarray(z_um, dtype=np.float64)
    if z.ndim != 1:
        raise InputError("z_um: pass the [Z] plane positions in um")
    z = _z_positions(z, z.size)
    focus = _check_index(focus, z.size, "focus")
    if not np.isfinite(defocus_um) or not defocus_um > 0:
        raise InputError(f"defocus_um must be > 0, got {defocus_um}")
    half_step = 0.5 * float(np.min(np.abs(np.diff(z)))) if z.size > 1 else 0.0
    indices = []
    for target in (z[focus] - defocus_um, z[focus] + defocus_um):
        if target < z.min() - half_step or target > z.max() + half_step:
            raise InputError(
                f"defocus_um: z = {target:g} um is outside the stack ({z.min():g} .. {z.max():g} um)"
            )
        index = int(np.argmin(np.abs(z - target)))
        if index == focus:
            raise InputError(f"defocus_um: {defocus_um:g} um is less than half the z step; both planes are in focus")
        indices.append(index)
    return tuple(indices)
