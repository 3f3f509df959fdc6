"""Classical phase retrieval from a defocus pair: the transport-of-intensity equation (TIE) baseline.

The TIE (Teague 1983; cvdm-math.md section 6), with the Fresnel sign convention of `fresnel.py`:

    -k dI/dz = div( I grad phi ),            k = 2 pi / lam                                   (6.4)
    dI/dz ~= ( I(+dz) - I(-dz) ) / (2 dz)    (central difference, error O(dz^2))              (6.5)

Solver: the uniform-intensity approximation I ~= mean(I0), I0 = (I(-dz) + I(+dz)) / 2, which turns (6.4) into
one Poisson equation

    laplacian(phi) = -k dI/dz / mean(I0)                                                     (6.6)

inverted with a Tikhonov-regularised inverse Laplacian (below). Teague's two-Poisson solution
(I0 grad phi = grad psi, laplacian(psi) = -k dI/dz, phi = laplacian^-1 div(grad psi / I0)) was measured
against it on smooth cell-like phases (8 images, 128 px, lam 0.521 um, dx 0.21 um, dz 1 um, float32, each
solver at its own best regularisation), offset-free MAE in rad:

    object                         uniform (6.6)   Teague
    peak 1.0 rad, unit amplitude   1.5e-5          1.4e-5
    peak 2.5 rad, unit amplitude   5.5e-5          9.3e-5
    peak 3.5 rad, unit amplitude   1.2e-4          2.8e-4
    peak 2.5 rad, noise sd 0.05    0.106           0.107
    peak 2.5 rad, amplitude 0.7-1  2.4e-2          3.3e-3

For the project's objects (unit-amplitude phase objects, noisy intensities) the uniform solver is as good or
better, at half the cost (one Poisson solve, no division by a noisy I0): the in-focus intensity of a pure phase
object is exactly uniform, so (6.6) is the exact TIE there, whereas Teague's solver has to divide by I0, the
average of the defocused intensities, which differs from the in-focus intensity by O(dz^2). Teague's solver
wins only on objects with amplitude contrast (last row), which is why it would be the choice for real cells
imaged with absorption.

Regularisation, in dimensionless form. With q the spatial frequency in cycles / um, the Laplacian is
-(2 pi |q|)^2 in Fourier space. Write kappa = 2 pi |q| dx, the angular frequency in rad / pixel
(kappa = 2 pi fftfreq(N) on the FFT grid, pi m / N on the DCT grid), so (2 pi |q|)^2 = kappa^2 / dx^2 and

    phi_hat = dx^2 * FT(k dI/dz / mean(I0)) * kappa^2 / (kappa^4 + regularization)            (6.7)

which is 1/kappa^2 (the exact inverse) for kappa^4 >> regularization and rolls off to zero below the cut-off
kappa_c = regularization^(1/4) rad / pixel, i.e. structures larger than about 2 pi / regularization^(1/4)
pixels are damped (regularization 1e-3: ~35 px; 1e-6: ~200 px; 1e-9: ~1100 px). Because kappa is measured per
pixel, one `regularization` value is the same filter (the same convolution kernel in pixels) at any pixel size
and any image size; it does not stretch with the field of view, so training crops and full images are
filtered alike.

The zero frequency is set to 0: TIE fixes the phase only up to a constant, and the returned phase is zero-mean.

The default, 1e-6 (cut-off period ~200 px), is a compromise measured on cell-like phases with the paper's noise
model (each intensity + N(lam_n, lam_n^2), lam_n ~ U(0, 0.2)): at 128 px it is the best value (MAE 0.11 rad vs
0.12 unregularised), while noise-free data lose some large-scale phase (0.02-0.03 rad vs 1e-4 at 1e-10), and
256 px noisy data want ~1e-4 or more. A weight of 1e-3, natural in other normalisations, damps everything
beyond ~35 px and is close to returning zero on 128 px images. The best value depends on noise level, image
size and object: use `tune_regularization` when the truth is known (that is "the best-tuned TIE baseline"), and
`noise_adaptive_regularization` when it is not (a weight from the noise level the pair itself shows).
Noise with a non-zero mean (the paper's model) raises mean(I0) and so scales the estimate by
1 / (1 + mean noise); the solver cannot tell that offset from light, and does not try.

Boundaries: a camera frame fixes laplacian(phi) inside it, and nothing of the harmonic functions (laplacian = 0)
that the boundary conditions choose: a tilt, a saddle, the tail of a cell cut by the edge. Each solver picks one.
`tie_fft` makes the phase periodic on the grid (exact for the periodic simulation in `fresnel.py`). `tie_dct`
gives it a zero normal derivative at the edges (Neumann): on 64-128 px crops of a smooth phase step (tanh,
1.5 rad, flat at the borders) plus a bump, its MAE is ~0.002 rad against ~0.37 rad for `tie_fft`, which must
make the phase equal at opposite edges. It uses type-II DCTs along each axis (type-III to invert), which is
mathematically identical to mirror-padding to 2H x 2W and using the FFT solver, at a quarter of the cost.
`tie_padded` takes the potential of the frame's own source (free space, as if nothing lay outside): on frames
cut out of wider fields of cells and natural images it is the best of the three (its docstring).
`tie_dirichlet` holds the phase at 0 on the edge; it is the pseudo-inverse of QPI's data-consistency step on
camera frames, which must correct a sample inside the frame without touching its edge values. No solver can see
a linear phase ramp (a tilt): with uniform intensity it has laplacian(phi) = 0 and leaves dI/dz = 0.

Non-uniform intensity: US-TIE (`tie_us`, `tie_us_from_derivative`). Objects that absorb (real cells in
brightfield) have a non-uniform in-focus intensity, and (6.6) then reads the intensity pattern as phase
curvature (measured: 0.04-0.07 rad MAE on 96 x 128 px cells behind amplitude 0.5..1 blobs, against 0.008 for
US-TIE). The full equation (6.4) is solved as Zhang et al. 2020 do (Opt. Lett. 45, 3649, "universal solution"),
with Teague's auxiliary function psi:

    laplacian(psi) = -k dI/dz                      (grad psi = I grad phi, if I grad phi is curl-free)      (6.8)
    grad phi = grad(psi) / I                                                                           (6.9)
    laplacian(phi) = div( grad(psi) / I )                                                              (6.10)
    -div(I grad phi) = k dI/dz, solved by conjugate gradients from (6.8)-(6.10), which precondition it  (6.11)

All Poisson solves use Neumann (DCT) boundaries: the fields are mirrored to 2H x 2W, where the FFT is the
DCT-II and spectral gradients and divergences are exact. (6.11) replaces Zhang's iterative compensation
(phi += Teague(residual)), which is the same preconditioner in a plain iteration and diverges when I varies by
more than ~10x; see `tie_us_from_derivative` for the measurements. The Tikhonov filter of (6.7) is applied
once, to the source, so that with uniform I US-TIE is `tie_dct`.

Notation:

    symbol        code name          units
    I(-dz), I(+dz) intensities[..., 0], intensities[..., 1]   (any intensity unit; only ratios matter)
    I0            in_focus           same unit as the intensities
    dI/dz         d_intensity_dz     intensity unit / um
    dz            defocus_um         um
    lam           wavelength_um      um
    k             wavenumber         rad / um
    dx            pixel_size_um      um
    kappa^2       kappa_squared      rad^2 / pixel^2
    regularization regularization    rad^4 / pixel^4 (dimensionless per pixel)
    phi           phase              rad
    psi           (Teague's auxiliary function)   rad (with I / mean(I) dimensionless)
"""

import math

import numpy as np
import tensorflow as tf

from cvdm_tf.errors import InputError
from cvdm_tf.physics.grids import even_extension, float64

__all__ = ["tie_fft", "tie_dct", "tie_padded", "tie_dirichlet", "frame_regularization", "tie_us",
           "tie_us_from_derivative", "tune_regularization", "noise_adaptive_regularization"]

_TWO_PI = 2.0 * math.pi


def _poisson_source(intensities, defocus_um, wavelength_um, pixel_size_um):
    """Steps 1-3 shared by both solvers: dx^2 * k dI/dz / mean(I0), the right side of (6.6) in rad / px^2.

    Returns it and the working float dtype (float64 for float64 input, float32 otherwise).
    """
    intensities = tf.convert_to_tensor(intensities)
    dtype = tf.float64 if intensities.dtype == tf.float64 else tf.float32
    intensities = tf.cast(intensities, dtype)
    before, after = intensities[..., 0], intensities[..., 1]
    d_intensity_dz = (after - before) / tf.cast(2.0 * float64(defocus_um), dtype)  # (6.5)
    in_focus = 0.5 * (before + after)
    mean_in_focus = tf.reduce_mean(in_focus, axis=[-2, -1], keepdims=True)
    wavenumber = _TWO_PI / float64(wavelength_um)
    # dx^2 makes the source per pixel^2, so the solver works with kappa in rad / pixel, eq. (6.7).
    scale = tf.cast(wavenumber * float64(pixel_size_um) ** 2, dtype)
    return scale * d_intensity_dz / mean_in_focus, dtype


def _inverse_laplacian_gain(kappa_squared, regularization):
    """kappa^2 / (kappa^4 + reg): the Tikhonov-regularised 1 / kappa^2 of eq. (6.7), with 0 at kappa = 0."""
    denominator = kappa_squared * kappa_squared + regularization
    safe = tf.where(denominator > 0, denominator, tf.ones_like(denominator))
    return tf.where(kappa_squared > 0, kappa_squared / safe, tf.zeros_like(kappa_squared))


def _angular_frequencies_fft(n, dtype):
    """kappa = 2 pi fftfreq(n) in rad / pixel, for a possibly symbolic n."""
    index = tf.range(n)
    index = tf.where(index < (n + 1) // 2, index, index - n)
    return tf.cast(_TWO_PI, dtype) * tf.cast(index, dtype) / tf.cast(n, dtype)


def _angular_frequencies_dct(n, dtype):
    """kappa = pi m / n in rad / pixel: the frequencies of the DCT-II basis cos(pi m (i + 1/2) / n)."""
    return tf.cast(math.pi, dtype) * tf.cast(tf.range(n), dtype) / tf.cast(n, dtype)


def _check_physics(defocus_um, wavelength_um, pixel_size_um, regularization):
    for name, value in (
        ("defocus_um", defocus_um),
        ("wavelength_um", wavelength_um),
        ("pixel_size_um", pixel_size_um),
    ):
        if isinstance(value, (int, float)) and not value > 0:
            raise InputError(f"{name} must be > 0, got {value}")
    if isinstance(regularization, (int, float)) and not regularization >= 0:
        raise InputError(f"regularization must be >= 0, got {regularization}")


def _zero_mean(phase):
    return phase - tf.reduce_mean(phase, axis=[-2, -1], keepdims=True)


def tie_fft(intensities, defocus_um=1.0, wavelength_um=0.521, pixel_size_um=0.21, regularization=1e-6):
    """TIE phase retrieval with a periodic FFT Poisson solver, eqs. (6.4)-(6.7).

    Steps:
      1. dI/dz = (I(+dz) - I(-dz)) / (2 dz), eq. (6.5); I0 = (I(-dz) + I(+dz)) / 2.
      2. Source f = dx^2 k dI/dz / mean(I0) (per image), so that laplacian_px(phi) = -f, eq. (6.6).
      3. phi_hat = FFT2(f) * kappa^2 / (kappa^4 + regularization), kappa = 2 pi fftfreq in rad / px, eq. (6.7).
      4. phi = real(IFFT2(phi_hat)), made exactly zero-mean.

    Args:
      intensities: float tensor [..., H, W, 2]: (I(-dz), I(+dz)), as `two_shot_intensities` returns them.
      defocus_um: float or scalar tensor. dz in um.
      wavelength_um: float or scalar tensor. lam in um.
      pixel_size_um: float or scalar tensor. dx in um.
      regularization: float or scalar tensor >= 0. Tikhonov weight in rad^4 / px^4 (module docstring).

    Returns:
      float32 tensor [..., H, W] (float64 for float64 input): phi in rad, zero-mean per image.
    """
    _check_physics(defocus_um, wavelength_um, pixel_size_um, regularization)
    source, dtype = _poisson_source(intensities, defocus_um, wavelength_um, pixel_size_um)
    shape = tf.shape(source)
    kappa_y = _angular_frequencies_fft(shape[-2], dtype)[:, tf.newaxis]
    kappa_x = _angular_frequencies_fft(shape[-1], dtype)[tf.newaxis, :]
    gain = _inverse_laplacian_gain(kappa_y**2 + kappa_x**2, tf.cast(regularization, dtype))
    complex_dtype = tf.complex128 if dtype == tf.float64 else tf.complex64
    # laplacian -> -kappa^2, so laplacian(phi) = -f gives phi_hat = +f_hat / kappa^2.
    phase_spectrum = tf.signal.fft2d(tf.cast(source, complex_dtype)) * tf.cast(gain, complex_dtype)
    return _zero_mean(tf.math.real(tf.signal.ifft2d(phase_spectrum)))


def _dct2d(image, inverse=False):
    """Orthonormal 2-D DCT-II (or its inverse, DCT-III) over the last two axes."""
    kind = 3 if inverse else 2
    image = tf.signal.dct(image, type=kind, norm="ortho")  # along W
    image = tf.linalg.matrix_transpose(image)
    image = tf.signal.dct(image, type=kind, norm="ortho")  # along H
    return tf.linalg.matrix_transpose(image)


def tie_dct(intensities, defocus_um=1.0, wavelength_um=0.521, pixel_size_um=0.21, regularization=1e-6):
    """TIE phase retrieval with a Neumann-boundary DCT Poisson solver, eqs. (6.4)-(6.7).

    Same as `tie_fft` except step 3, which uses the DCT-II basis (reflective boundaries, no periodic wrap):

    Steps:
      1. dI/dz = (I(+dz) - I(-dz)) / (2 dz), eq. (6.5); I0 = (I(-dz) + I(+dz)) / 2.
      2. Source f = dx^2 k dI/dz / mean(I0), eq. (6.6).
      3. phi_dct = DCT2(f) * kappa^2 / (kappa^4 + regularization), kappa^2 = (pi m / H)^2 + (pi n / W)^2.
      4. phi = IDCT2(phi_dct), made exactly zero-mean.

    Equivalent to mirror-padding f to 2H x 2W, running the FFT solver and cropping the first H x W.

    Args and returns: as `tie_fft`.
    """
    _check_physics(defocus_um, wavelength_um, pixel_size_um, regularization)
    source, dtype = _poisson_source(intensities, defocus_um, wavelength_um, pixel_size_um)
    shape = tf.shape(source)
    kappa_y = _angular_frequencies_dct(shape[-2], dtype)[:, tf.newaxis]
    kappa_x = _angular_frequencies_dct(shape[-1], dtype)[tf.newaxis, :]
    gain = _inverse_laplacian_gain(kappa_y**2 + kappa_x**2, tf.cast(regularization, dtype))
    return _zero_mean(_dct2d(_dct2d(source) * gain, inverse=True))


def tie_padded(intensities, defocus_um=1.0, wavelength_um=0.521, pixel_size_um=0.21, regularization=1e-6):
    """TIE phase retrieval of a camera frame with free-space boundaries: the FFT solver on the source zero-padded
    to 2H x 2W, eqs. (6.4)-(6.7).

    A frame cut out of a wider field fixes laplacian(phi) inside it and nothing else: any harmonic function
    (laplacian = 0: a tilt, a saddle, the tail of a cell cut by the edge) can be added without changing the
    pair. Each solver picks one: `tie_fft` makes phi periodic, `tie_dct` gives it a zero normal derivative at
    the edges, this one the potential of the source inside the frame alone, as if there were no object outside
    it (the free-space Green's function, to the extent a 2x padded grid approximates it). Measured on the camera
    frames of `benchmarks/qpi_vs_tie.py` (128 px centres of fields twice as wide: 8 cell fields, 4 natural images;
    lam 0.521 um, dx 0.21 um, dz 1 um; each solver at its oracle weight; offset-free MAE in rad): noise-free 0.264
    against 0.297 (FFT) and 0.305 (DCT), paper noise 0.323 against 0.342 and 0.345; at 0.60 um, 0.16 um, 2 um
    0.236 / 0.245 against 0.292-0.297. Padding by H / 2 or by H gave the same.

    Steps:
      1. Source f = dx^2 k dI/dz / mean(I0), eqs. (6.5)-(6.6), on the frame.
      2. Zero-pad f by H / 2 and W / 2 on each side (rounded up).
      3. The FFT solve of `tie_fft`, step 3, on the padded grid.
      4. Crop back to H x W and make phi exactly zero-mean.

    Args and returns: as `tie_fft`.
    """
    _check_physics(defocus_um, wavelength_um, pixel_size_um, regularization)
    source, dtype = _poisson_source(intensities, defocus_um, wavelength_um, pixel_size_um)
    shape = tf.shape(source)
    height, width = shape[-2], shape[-1]
    pad_y, pad_x = (height + 1) // 2, (width + 1) // 2
    rank = tf.rank(source)
    paddings = tf.concat([tf.zeros([rank - 2, 2], tf.int32), [[pad_y, pad_y], [pad_x, pad_x]]], axis=0)
    padded = tf.pad(source, paddings)
    kappa_y = _angular_frequencies_fft(height + 2 * pad_y, dtype)[:, tf.newaxis]
    kappa_x = _angular_frequencies_fft(width + 2 * pad_x, dtype)[tf.newaxis, :]
    gain = _inverse_laplacian_gain(kappa_y**2 + kappa_x**2, tf.cast(regularization, dtype))
    complex_dtype = tf.complex128 if dtype == tf.float64 else tf.complex64
    phase_spectrum = tf.signal.fft2d(tf.cast(padded, complex_dtype)) * tf.cast(gain, complex_dtype)
    phase = tf.math.real(tf.signal.ifft2d(phase_spectrum))[..., pad_y:pad_y + height, pad_x:pad_x + width]
    return _zero_mean(phase)


def frame_regularization(height, width, strength=0.25):
    """The Tikhonov weight that damps what a frame of H x W pixels leaves undetermined: strength * kappa_L^4,
    kappa_L = 2 pi / min(H, W) rad / px, the lowest frequency the frame holds (float32 scalar tensor).

    The harmonic part a frame does not fix (`tie_padded`) lives at the frame's own scale, so the damping that
    best trades it against the phase is a fixed fraction of kappa_L^4, whatever the frame's size. Measured by
    `python scripts/frame_weight.py` (camera frames of 64 and 128 px of cell fields, zero-padded TIE at the
    noise-adaptive weight plus this one): strength 0.25 is within 0.011 rad of the best strength at both sizes,
    noise-free and with the paper's noise; without it, noise-free frames lose 0.05-0.08 rad (0.274 against 0.225
    at 128 px).
    """
    size = tf.cast(tf.minimum(height, width), tf.float32)
    return strength * (_TWO_PI / size) ** 4


def tie_dirichlet(intensities, defocus_um=1.0, wavelength_um=0.521, pixel_size_um=0.21, regularization=1e-6,
                  margin=0):
    """TIE with the phase held at 0 on the frame's edge (Dirichlet boundaries), the source ignored within
    `margin` px of the edge: the correction a data-consistency step may make to a sample without touching what the
    frame leaves open (its values at the edge, hence its harmonic part). Not a phase estimate on its own.

    Steps:
      1. Source f = dx^2 k dI/dz / mean(I0), eqs. (6.5)-(6.6); set to 0 within `margin` px of the edge, where
         the light that reached the camera came partly from outside the frame.
      2. Odd extension to 2(H + 1) x 2(W + 1) (zero rows and columns on the edge, then the negated mirror
         image): periodic, and its FFT is a sine transform whose basis vanishes on the edge.
      3. The FFT solve of `tie_fft`, step 3, on that grid; crop back to H x W, zero-mean.

    Args:
      intensities, defocus_um, wavelength_um, pixel_size_um, regularization: as `tie_fft`.
      margin: python int >= 0 or scalar int32 tensor. Pixels along each edge whose source is not trusted.

    Returns:
      float32 tensor [..., H, W] (float64 for float64 input), zero-mean.
    """
    _check_physics(defocus_um, wavelength_um, pixel_size_um, regularization)
    source, dtype = _poisson_source(intensities, defocus_um, wavelength_um, pixel_size_um)
    shape = tf.shape(source)
    height, width = shape[-2], shape[-1]
    if not (isinstance(margin, int) and margin == 0):  # a python int or a scalar tensor
        inside_y = tf.logical_and(tf.range(height) >= margin, tf.range(height) < height - margin)
        inside_x = tf.logical_and(tf.range(width) >= margin, tf.range(width) < width - margin)
        inside = tf.logical_and(inside_y[:, tf.newaxis], inside_x[tf.newaxis, :])
        source = tf.where(inside, source, tf.zeros_like(source))
    zeros_x = tf.zeros_like(source[..., :1])
    rows = tf.concat([zeros_x, source, zeros_x, -tf.reverse(source, axis=[-1])], axis=-1)
    zeros_y = tf.zeros_like(rows[..., :1, :])
    odd = tf.concat([zeros_y, rows, zeros_y, -tf.reverse(rows, axis=[-2])], axis=-2)
    kappa_y = _angular_frequencies_fft(2 * height + 2, dtype)[:, tf.newaxis]
    kappa_x = _angular_frequencies_fft(2 * width + 2, dtype)[tf.newaxis, :]
    gain = _inverse_laplacian_gain(kappa_y**2 + kappa_x**2, tf.cast(regularization, dtype))
    complex_dtype = tf.complex128 if dtype == tf.float64 else tf.complex64
    phase_spectrum = tf.signal.fft2d(tf.cast(odd, complex_dtype)) * tf.cast(gain, complex_dtype)
    phase = tf.math.real(tf.signal.ifft2d(phase_spectrum))[..., 1:height + 1, 1:width + 1]
    return _zero_mean(phase)


# === US-TIE: non-uniform intensity (Teague's auxiliary function, Neumann boundaries, conjugate gradients) ===


class _MirrorSpectrum:
    """Spectral derivatives on the mirrored 2H x 2W grid, in the rfft2d layout, kappa in rad / pixel.

    First derivatives use i kappa with the Nyquist row / column set to zero (the derivative of a real field must
    stay real); the inverse Laplacian uses the full kappa^2 with 0 at kappa = 0. On mirrored data the Nyquist
    coefficients of a DCT-II field are zero, so both conventions agree there.
    """

    def __init__(self, height, width):
        self.size = tf.stack([2 * height, 2 * width])
        # kappa = pi m / n (2 pi fftfreq(2n)), pi in full float64 (tf.cast(math.pi, tf.float64) rounds it to float32).
        index_y = tf.range(2 * height)
        index_y = tf.where(index_y <= height, index_y, index_y - 2 * height)
        kappa_y = (math.pi * tf.cast(index_y, tf.float64) / tf.cast(height, tf.float64))[:, tf.newaxis]
        kappa_x = (math.pi * tf.cast(tf.range(width + 1), tf.float64) / tf.cast(width, tf.float64))[tf.newaxis, :]
        self.kappa_squared = kappa_y**2 + kappa_x**2
        nyquist_y = tf.equal(tf.range(2 * height), height)[:, tf.newaxis]
        nyquist_x = tf.equal(tf.range(width + 1), width)[tf.newaxis, :]
        self.i_kappa_y = tf.complex(tf.zeros_like(kappa_y), tf.where(nyquist_y, tf.zeros_like(kappa_y), kappa_y))
        self.i_kappa_x = tf.complex(tf.zeros_like(kappa_x), tf.where(nyquist_x, tf.zeros_like(kappa_x), kappa_x))
        # 1 / kappa^2 and 0 at kappa = 0: the exact inverse Laplacian, up to the constant TIE cannot fix.
        self.inverse_laplacian = tf.cast(_inverse_laplacian_gain(self.kappa_squared, tf.constant(0.0, tf.float64)),
                                         tf.complex128)

    def forward(self, field):
        return tf.signal.rfft2d(field)

    def inverse(self, spectrum):
        return tf.signal.irfft2d(spectrum, fft_length=self.size)

    def gradient(self, spectrum):
        return self.inverse(self.i_kappa_y * spectrum), self.inverse(self.i_kappa_x * spectrum)

    def divergence(self, field_y, field_x):
        """The spectrum of d(field_y)/dy + d(field_x)/dx."""
        return self.i_kappa_y * self.forward(field_y) + self.i_kappa_x * self.forward(field_x)


def _teague(ops, source, intensity):
    """Teague's solution of div(I grad phi) = -source, eqs. (6.8)-(6.10), real fields on the mirrored grid.

    laplacian(psi) = -source; grad phi = grad(psi) / I; laplacian(phi) = div(grad psi / I). Exact when I grad phi
    is curl-free (always, for uniform I). As a map source -> phi it is symmetric positive definite on zero-mean
    fields, which is what lets it precondition conjugate gradients.
    """
    psi_spectrum = ops.forward(source) * ops.inverse_laplacian  # laplacian -> -kappa^2
    gradient_y, gradient_x = ops.gradient(psi_spectrum)
    return -ops.inverse(ops.divergence(gradient_y / intensity, gradient_x / intensity) * ops.inverse_laplacian)


def _tie_operator(ops, phase, intensity):
    """-div(I grad phi), eq. (6.4)'s right side with the sign that makes it symmetric positive definite."""
    gradient_y, gradient_x = ops.gradient(ops.forward(phase))
    return -ops.inverse(ops.divergence(intensity * gradient_y, intensity * gradient_x))


def _dot(a, b):
    return tf.reduce_sum(a * b, axis=[-2, -1], keepdims=True)


def _conjugate_gradients(ops, source, intensity, iterations):
    """Solve -div(I grad phi) = source by conjugate gradients preconditioned with Teague's solver, eq. (6.11).

    Starts from Teague's phi_0. Zhang et al.'s compensation, phi_{n+1} = phi_n + Teague(residual), is the plain
    (Richardson) iteration with the same preconditioner; it diverges when I varies by more than ~10x across the
    image (measured: I in 0.01..1 blows up within 3 iterations). Both operators are symmetric positive definite
    on zero-mean fields, so conjugate gradients converge for any positive I, and faster.
    """
    phase = _teague(ops, source, intensity)
    residual = source - _tie_operator(ops, phase, intensity)
    preconditioned = _teague(ops, residual, intensity)
    direction = preconditioned
    residual_dot = _dot(residual, preconditioned)
    for _ in range(iterations):
        applied = _tie_operator(ops, direction, intensity)
        step = tf.math.divide_no_nan(residual_dot, _dot(direction, applied))
        phase = phase + step * direction
        residual = residual - step * applied
        preconditioned = _teague(ops, residual, intensity)
        new_residual_dot = _dot(residual, preconditioned)
        direction = preconditioned + tf.math.divide_no_nan(new_residual_dot, residual_dot) * direction
        residual_dot = new_residual_dot
    return phase


def tie_us_from_derivative(
    in_focus,
    d_intensity_dz,
    wavelength_um=0.521,
    pixel_size_um=0.21,
    regularization=1e-6,
    iterations=10,
    min_intensity=1e-3,
):
    """US-TIE: the full TIE with non-uniform intensity, Neumann boundaries, eqs. (6.4), (6.8)-(6.11).

    After Zhang et al. 2020 ("On a universal solution to the transport-of-intensity equation", Opt. Lett. 45,
    3649): Teague's auxiliary function with DCT (Neumann) Poisson solvers, then iterations that remove the error
    of Teague's curl-free assumption. All of it runs on the mirrored 2H x 2W grid (FFT there == DCT-II here), in
    float64.

    Steps:
      1. I_n = I0 / mean(I0) (per image), floored at `min_intensity`; source f = dx^2 k dI/dz / mean(I0) in
         rad / px^2, so the TIE reads -div_px(I_n grad_px phi) = f.
      2. Tikhonov filter on the source, once: f_hat * kappa^4 / (kappa^4 + regularization) (the filter of eq.
         (6.7), 0 at kappa = 0). Everything after it is an exact inverse, so with uniform I0 the result is
         `tie_dct`'s.
      3. Teague, eqs. (6.8)-(6.10): laplacian(psi) = -f; phi_0 = laplacian^-1 div(grad(psi) / I_n).
      4. `iterations` steps of conjugate gradients on -div(I_n grad phi) = f from phi_0, preconditioned with
         Teague's solver, eq. (6.11) (`_conjugate_gradients` says why not Zhang's plain compensation).
      5. Crop the mirrored grid back to H x W and make phi zero-mean.

    Measured (two 128 px cell phantoms, phase peak 2.5 rad, dz 0.5 um, noise-free, in-focus I0 given,
    regularization 1e-10, offset-free MAE in rad; `tie_dct` 0.04-0.14 on all of them):

        amplitude                                   Teague (0 iterations)   3 iterations   10 iterations
        0.6..1, following the phase                 0.001-0.002             converged      converged
        0.3..1, an independent absorber             0.010-0.14              5e-4           5e-4
        0.1..1, independent                         0.04-0.59               7e-4-3e-3      4e-4-5e-4
        0.01..1 (I0 spans 1e4), independent         0.25-3.3                5e-3-0.06      7e-4-3e-3

    Zhang et al.'s plain compensation diverged on the last two rows.

    Args:
      in_focus: float tensor [..., H, W]. I0, the in-focus intensity (any unit; only ratios matter).
      d_intensity_dz: float tensor [..., H, W]. dI/dz at focus, in intensity units / um.
      wavelength_um: float or scalar tensor. lam in um.
      pixel_size_um: float or scalar tensor. dx in um.
      regularization: float or scalar tensor >= 0. Tikhonov weight in rad^4 / px^4 (module docstring).
      iterations: python int >= 0. Conjugate-gradient iterations after Teague (0: Teague's solution).
      min_intensity: python float > 0. Floor for I0 / mean(I0), so dark pixels do not divide by ~0.

    Returns:
      float32 tensor [..., H, W] (float64 when both inputs are float64): phi in rad, zero-mean per image.
    """
    _check_physics(1.0, wavelength_um, pixel_size_um, regularization)  # no defocus here: 1.0 passes
    if int(iterations) != iterations or iterations < 0:
        raise InputError(f"iterations must be an integer >= 0, got {iterations}")
    if not min_intensity > 0:
        raise InputError(f"min_intensity must be > 0, got {min_intensity}")
    in_focus = tf.convert_to_tensor(in_focus)
    d_intensity_dz = tf.convert_to_tensor(d_intensity_dz)
    both_float64 = in_focus.dtype == tf.float64 and d_intensity_dz.dtype == tf.float64
    out_dtype = tf.float64 if both_float64 else tf.float32
    in_focus = tf.cast(in_focus, tf.float64)
    d_intensity_dz = tf.cast(d_intensity_dz, tf.float64)
    in_focus, d_intensity_dz = in_focus + tf.zeros_like(d_intensity_dz), d_intensity_dz + tf.zeros_like(in_focus)

    # 1. Dimensionless intensity and source, as in `_poisson_source`.
    mean_in_focus = tf.reduce_mean(in_focus, axis=[-2, -1], keepdims=True)
    intensity = tf.maximum(in_focus / mean_in_focus, tf.constant(min_intensity, tf.float64))
    scale = _TWO_PI / float64(wavelength_um) * float64(pixel_size_um) ** 2
    source = scale * d_intensity_dz / mean_in_focus
    shape = tf.shape(source)
    height, width = shape[-2], shape[-1]
    ops = _MirrorSpectrum(height, width)

    # 2. Tikhonov filter: kappa^2 * kappa^2 / (kappa^4 + reg).
    low_pass = ops.kappa_squared * _inverse_laplacian_gain(ops.kappa_squared, float64(regularization))
    source = ops.inverse(ops.forward(even_extension(source)) * tf.cast(low_pass, tf.complex128))

    # 3.-4. Teague, then conjugate gradients.
    phase = _conjugate_gradients(ops, source, even_extension(intensity), int(iterations))

    # 5. Back to H x W.
    return tf.cast(_zero_mean(phase[..., :height, :width]), out_dtype)


def tie_us(
    intensities,
    defocus_um=1.0,
    wavelength_um=0.521,
    pixel_size_um=0.21,
    regularization=1e-6,
    in_focus=None,
    iterations=10,
):
    """2-shot US-TIE: `tie_us_from_derivative` on a defocus pair, the same call as `tie_fft` / `tie_dct`.

    Steps:
      1. dI/dz = (I(+dz) - I(-dz)) / (2 dz), eq. (6.5).
      2. I0 = `in_focus` when given (a third, in-focus shot), else (I(-dz) + I(+dz)) / 2, which differs from the
         in-focus intensity by O(dz^2).
      3. `tie_us_from_derivative(I0, dI/dz, ...)`.

    Args:
      intensities: float tensor [..., H, W, 2]: (I(-dz), I(+dz)).
      defocus_um, wavelength_um, pixel_size_um, regularization: as `tie_fft`.
      in_focus: optional float tensor broadcastable to [..., H, W]: the measured in-focus intensity.
      iterations: python int >= 0. Conjugate-gradient iterations, see `tie_us_from_derivative`.

    Returns:
      float32 tensor [..., H, W] (float64 for float64 input): phi in rad, zero-mean per image.
    """
    _check_physics(defocus_um, wavelength_um, pixel_size_um, regularization)
    intensities = tf.convert_to_tensor(intensities)
    dtype = tf.float64 if intensities.dtype == tf.float64 else tf.float32
    intensities = tf.cast(intensities, tf.float64)
    before, after = intensities[..., 0], intensities[..., 1]
    d_intensity_dz = (after - before) / (2.0 * float64(defocus_um))
    in_focus = 0.5 * (before + after) if in_focus is None else tf.cast(in_focus, tf.float64)
    phase = tie_us_from_derivative(
        in_focus, d_intensity_dz, wavelength_um, pixel_size_um, regularization, iterations=iterations
    )
    return tf.cast(phase, dtype)


_SOLVERS = {"fft": tie_fft, "dct": tie_dct, "pad": tie_padded, "us": tie_us}


# The noise-adaptive weight (`noise_adaptive_regularization`), reg = C * sigma_f^P, fitted by
# `python scripts/fit_tie_weight.py` on 16 cell phantoms of 128 px (seed 777, neither the training nor the test
# phantoms), paper noise lam_n in 0.01 .. 0.2: C and P minimise the MAE over those levels, 0.1884 rad against
# 0.1879 with each level's own oracle weight and 0.2050 with the best single weight. Nearly noise-free data want
# almost no damping, which the power law gives them.
NOISE_RULE_C = 0.00956
NOISE_RULE_P = 2.40


def noise_adaptive_regularization(sigma, defocus_um=1.0, wavelength_um=0.521, pixel_size_um=0.21):
    """The Tikhonov weight for a pair whose intensities (divided by their mean) carry white noise of std `sigma`.

    The source of eq. (6.6), f = k dx^2 (I(+dz) - I(-dz)) / (2 dz mean(I0)), then carries white noise of std
    sigma_f = k dx^2 sigma / (sqrt(2) dz); a Wiener-like trade between that noise and the phase's spectrum gives
    reg = C sigma_f^P, with C and P fitted on cell phantoms (above: P = 2.4, not Wiener's 2, because a cell's
    phase spectrum is not white). Measured on the 8 test phantoms of `benchmarks/qpi_vs_tie.py` (paper noise):
    0.173 rad against 0.189 for the best single weight and 0.170 for each image's own oracle weight; noise-free,
    it picks ~1e-11 and is nearly exact (0.0044 rad, as the oracle).

    Args:
      sigma: float or float tensor [...]: noise std of I / mean(I) (e.g. `noise_estimate.immerkaer_sigma`).
      defocus_um, wavelength_um, pixel_size_um: the pair's physics.

    Returns:
      float32 tensor [...]: regularization in rad^4 / px^4, for `tie_fft` / `tie_dct` (add two trailing axes to
      give each image its own).
    """
    wavenumber = _TWO_PI / float64(wavelength_um)
    gain = tf.cast(wavenumber * float64(pixel_size_um) ** 2 / (math.sqrt(2.0) * float64(defocus_um)), tf.float32)
    sigma_f = gain * tf.maximum(tf.convert_to_tensor(sigma, tf.float32), 0.0)
    return NOISE_RULE_C * sigma_f**NOISE_RULE_P


def tune_regularization(intensities, phase_true, solver="fft", candidates=None, **physics):
    """Pick the Tikhonov weight that minimises the offset-free MAE against known phases ("best-tuned TIE").

    Steps:
      1. Candidates: `candidates`, or a log grid 1e-12 .. 1e0 with two points per decade (25 values). The
         grid reaches down to 1e-12 because noise-free data want almost no damping: with kappa in rad / px the
         lowest frequency of an N px image has kappa^4 = (2 pi / N)^4, 1.4e-9 at N = 1024.
      2. For each, solve all images with `tie_fft` / `tie_dct` / `tie_us`.
      3. Offset-free MAE: subtract each image's own mean from estimate and truth, then mean |difference| over
         all pixels and images (TIE fixes the phase only up to a constant).
      4. Return the candidate with the smallest MAE (the first one on a tie).

    Args:
      intensities: float tensor [..., H, W, 2]: (I(-dz), I(+dz)).
      phase_true: float tensor [..., H, W]: the known phase in rad.
      solver: "fft", "dct", "pad" or "us".
      candidates: optional iterable of regularization values >= 0.
      **physics: defocus_um, wavelength_um, pixel_size_um, passed to the solver.

    Returns:
      (best_reg, table): best_reg is a python float; table is a dict {regularization: MAE in rad} in the order
      of the candidates.
    """
    if solver not in _SOLVERS:
        raise InputError(f"solver must be one of {sorted(_SOLVERS)}, got {solver!r}")
    unknown = set(physics) - {"defocus_um", "wavelength_um", "pixel_size_um"}
    if unknown:
        raise InputError(f"unknown physics arguments {sorted(unknown)}")
    if candidates is None:
        candidates = np.logspace(-12.0, 0.0, 25)
    candidates = [float(c) for c in candidates]
    if not candidates:
        raise InputError("candidates must not be empty")
    solve = _SOLVERS[solver]
    truth = np.asarray(phase_true, dtype=np.float64)
    truth = truth - truth.mean(axis=(-2, -1), keepdims=True)
    table = {}
    for regularization in candidates:
        estimate = solve(intensities, regularization=regularization, **physics).numpy().astype(np.float64)
        estimate = estimate - estimate.mean(axis=(-2, -1), keepdims=True)
        table[regularization] = float(np.mean(np.abs(estimate - truth)))
    best_reg = min(table, key=table.get)
    return best_reg, table
