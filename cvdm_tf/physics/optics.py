"""Fluorescence microscope image formation for the super-resolution (BioSR-like) task.

A fluorescence microscope is an incoherent imaging system: the image is the fluorophore density convolved with
the intensity PSF |h|^2, where h is the amplitude PSF, the inverse Fourier transform of the pupil P (Goodman,
*Introduction to Fourier Optics*, 3rd ed., sec. 6.3):

    P(f)   = 1 if |f| <= NA / lam else 0                                                     (1)
    OTF(f) = FFT( |IFFT(P)|^2 )(f) / OTF(0)  = (P * P)(f) / (P * P)(0)   (autocorrelation)     (2)
    OTF(s) = (2 / pi) (arccos(s) - s sqrt(1 - s^2)),  s = |f| / (2 NA / lam) <= 1, else 0        (3)
    I      = IFFT( FFT(rho) * OTF )        (periodic convolution with the PSF)                 (4)

(3) is the closed form of (2) for a continuous circular pupil (Goodman eq. 6-32); on a grid, (2) is computed
exactly for the sampled pupil and approaches (3) as the pupil covers more frequency pixels.

The SR pair is simulated as:
  1. rho, the structure, on the fine (SIM) grid of pitch dx (BioSR: ~31.3 nm, see sr-notes.md).
  2. widefield: rho blurred with the widefield OTF (cut-off 2 NA / lam) on the fine grid, then 2 x 2 binned to
     the camera grid of pitch 2 dx (`widefield`).
  3. SIM-like target: rho blurred with the OTF of a pupil of radius 2 NA / lam, i.e. twice the widefield
     cut-off (`sim_image`). Real SIM's OTF is the sum of shifted widefield OTFs, not this one; this stand-in
     has the same support and a smooth, monotone fall-off.
  4. Optionally, shot and read noise (`poisson_gaussian`).
Classical baselines on numpy arrays: `bicubic_up` and `richardson_lucy_sr` (scikit-image).

Notation (all lengths in micrometres):

    symbol      code name            units
    lam         wavelength_um        um (emission wavelength; 0.525 um for GFP-like dyes)
    NA          na                   1 (numerical aperture; 1.3 oil objective by default)
    dx          pixel_size_um        um (square pixels of the grid the array lives on)
    f, fx, fy   _radial_frequency    cycles / um (numpy.fft.fftfreq ordering, no fftshift)
    P           pupil                1 inside the pupil, 0 outside
    OTF         otf                  1 at f = 0, real, even, >= 0 for a circular pupil
    rho         structure            fluorophore density per fine pixel, arbitrary units
    N           photons              expected photons per unit of image intensity

Choices:
- Everything is periodic (FFT convolution): the field of view is assumed to tile the plane, as in
  `fresnel.py`. Crop a margin off if edge wrap matters.
- The OTF is computed in complex128 and returned as float32; it is exactly zero (to rounding) beyond the
  cut-off because the sampled pupil's autocorrelation is. If the cut-off exceeds the grid's Nyquist frequency
  1 / (2 dx), the OTF wraps around (aliases), which is the OTF of the point-sampled PSF. On the BioSR fine grid
  the SIM cut-off 4 NA / lam = 9.9 cycles / um is below the Nyquist frequency 16 cycles / um.
- Shapes come from `tf.shape`, so the TensorFlow functions run inside `tf.function` and `tf.data` maps with
  unknown H, W and any number of leading batch axes. Non-square grids are fine: fx and fy have their own
  spacing 1 / (W dx) and 1 / (H dx).
"""

import math

import numpy as np
import tensorflow as tf
from skimage.restoration import richardson_lucy
from skimage.transform import resize

from cvdm_tf.errors import InputError
from cvdm_tf.physics.grids import check_positive, fft_frequencies, float64

__all__ = [
    "pupil",
    "otf",
    "blur",
    "bin2",
    "widefield",
    "sim_image",
    "poisson_gaussian",
    "psf",
    "richardson_lucy_sr",
    "bicubic_up",
]

# The Airy pattern's first zero is at 0.61 lam / NA (Born & Wolf sec. 8.5.2): 1.21967 / 2.
_AIRY_FIRST_ZERO = 0.6098


def _check_optics(pixel_size_um, na, wavelength_um):
    check_positive(pixel_size_um, "pixel_size_um")
    check_positive(na, "na")
    check_positive(wavelength_um, "wavelength_um")


def _radial_frequency(height, width, pixel_size_um):
    """|f| = sqrt(fx^2 + fy^2) on the H x W FFT grid, float64 [H, W] in cycles / um."""
    fy = fft_frequencies(height, pixel_size_um)[:, tf.newaxis]
    fx = fft_frequencies(width, pixel_size_um)[tf.newaxis, :]
    return tf.sqrt(fx * fx + fy * fy)


def _pupil64(height, width, pixel_size_um, na, wavelength_um):
    radius = float64(na) / float64(wavelength_um)
    return tf.cast(_radial_frequency(height, width, pixel_size_um) <= radius, tf.float64)


def _otf64(height, width, pixel_size_um, na, wavelength_um):
    """Eq. (2) in float64: FFT(|IFFT(P)|^2), normalised to 1 at f = 0."""
    amplitude_psf = tf.signal.ifft2d(tf.cast(_pupil64(height, width, pixel_size_um, na, wavelength_um), tf.complex128))
    intensity_psf = tf.math.real(amplitude_psf) ** 2 + tf.math.imag(amplitude_psf) ** 2
    transfer = tf.math.real(tf.signal.fft2d(tf.cast(intensity_psf, tf.complex128)))
    return transfer / transfer[0, 0]


def pupil(height, width, pixel_size_um, na, wavelength_um):
    """The circular pupil P(f) of eq. (1), in FFT frequency layout.

    Steps:
      1. fx = fftfreq(width, d=dx), fy = fftfreq(height, d=dx) in cycles / um (unshifted FFT order).
      2. P = 1 where sqrt(fx^2 + fy^2) <= NA / lam, else 0 (compared in float64).

    Args:
      height: int or scalar int tensor. H, number of rows.
      width: int or scalar int tensor. W, number of columns.
      pixel_size_um: float or scalar tensor. dx, the pitch of the grid in um.
      na: float or scalar tensor. NA, the numerical aperture.
      wavelength_um: float or scalar tensor. lam, the emission wavelength in um.

    Returns:
      float32 tensor [H, W] of zeros and ones.
    """
    _check_optics(pixel_size_um, na, wavelength_um)
    return tf.cast(_pupil64(height, width, pixel_size_um, na, wavelength_um), tf.float32)


def otf(height, width, pixel_size_um, na, wavelength_um):
    """The incoherent OTF of a circular pupil, eq. (2): the pupil's autocorrelation, cut-off 2 NA / lam.

    Steps:
      1. P from eq. (1) on the H x W frequency grid of pitch dx.
      2. Amplitude PSF h = IFFT2(P); intensity PSF |h|^2 (complex128).
      3. OTF = Re FFT2(|h|^2), divided by its value at f = 0 so that the PSF sums to one.

    Args:
      height: int or scalar int tensor. H, number of rows.
      width: int or scalar int tensor. W, number of columns.
      pixel_size_um: float or scalar tensor. dx, the pitch of the grid in um.
      na: float or scalar tensor. NA, the numerical aperture.
      wavelength_um: float or scalar tensor. lam, the emission wavelength in um.

    Returns:
      float32 tensor [H, W] in FFT layout (f = 0 at [0, 0]), real, OTF[0, 0] = 1, zero for |f| > 2 NA / lam.
    """
    _check_optics(pixel_size_um, na, wavelength_um)
    return tf.cast(_otf64(height, width, pixel_size_um, na, wavelength_um), tf.float32)


def _as_real(image):
    """float64 stays float64 (precision on request); anything else becomes float32."""
    image = tf.convert_to_tensor(image)
    return tf.cast(image, tf.float64 if image.dtype == tf.float64 else tf.float32)


def blur(image, otf):
    """Periodic convolution of `image` with the PSF whose OTF is `otf`, eq. (4).

    Steps:
      1. FFT2 of the image over its last two axes.
      2. Multiply by the OTF (broadcast over leading axes).
      3. Inverse FFT2; keep the real part (the imaginary part is rounding, the OTF being real and even).

    Args:
      image: float tensor [..., H, W]. Intensity or density; leading axes are batch axes.
      otf: float tensor [H, W]. An OTF in FFT layout, e.g. from `otf(...)`.

    Returns:
      float32 tensor [..., H, W] (float64 for float64 input). Its sum equals the image's when OTF[0, 0] = 1.
    """
    image = _as_real(image)
    transfer = tf.convert_to_tensor(otf)
    if image.shape.rank is not None and transfer.shape.rank is not None:
        if image.shape[-2:].is_fully_defined() and transfer.shape.is_fully_defined():
            if image.shape[-2:] != transfer.shape:
                raise InputError(f"image grid {image.shape[-2:]} does not match the OTF's {transfer.shape}")
    complex_dtype = tf.complex128 if image.dtype == tf.float64 else tf.complex64
    spectrum = tf.signal.fft2d(tf.cast(image, complex_dtype))
    return tf.math.real(tf.signal.ifft2d(spectrum * tf.cast(transfer, complex_dtype)))


def bin2(image):
    """2 x 2 binning from the fine (SIM) grid to the camera (widefield) grid: the SUM of each 2 x 2 block.

    A camera pixel twice as wide collects the photons that would have landed on the four fine pixels, so the
    sum (not the mean) is the physical operation: total photons are conserved and shot noise applied after
    binning has the right signal-to-noise ratio. Values are therefore ~4x those of the fine grid.

    Args:
      image: float tensor [..., H, W] with H and W even.

    Returns:
      float32 tensor [..., H / 2, W / 2] (float64 for float64 input).
    """
    image = _as_real(image)
    if image.shape.rank is not None:
        if image.shape.rank < 2:
            raise InputError(f"bin2 needs an image [..., H, W], got shape {image.shape}")
        for dim in image.shape[-2:]:
            if dim is not None and dim % 2:
                raise InputError(f"bin2 needs even H and W, got {image.shape[-2]} x {image.shape[-1]}")
    shape = tf.shape(image)
    height, width = shape[-2], shape[-1]
    blocks = tf.reshape(image, tf.concat([shape[:-2], [height // 2, 2, width // 2, 2]], axis=0))
    return tf.reduce_sum(blocks, axis=[-3, -1])


def widefield(structure, pixel_size_um, na=1.3, wavelength_um=0.525):
    """The widefield camera image of a structure given on the fine grid.

    Steps:
      1. OTF of the pupil NA / lam (cut-off 2 NA / lam) on the fine H x W grid of pitch dx, eq. (2).
      2. Blur the structure with it on the fine grid, eq. (4).
      3. 2 x 2 binning (sum) onto the camera grid of pitch 2 dx (`bin2`).

    Args:
      structure: float tensor [..., H, W], H and W even. rho, fluorophore density on the fine grid.
      pixel_size_um: float or scalar tensor. dx, the fine grid's pitch in um (BioSR SIM grid ~0.0313).
      na: float or scalar tensor. NA (default 1.3).
      wavelength_um: float or scalar tensor. lam in um (default 0.525).

    Returns:
      float32 tensor [..., H / 2, W / 2] (float64 for float64 input): photons-proportional intensity on the
      camera grid; its sum equals the structure's.
    """
    _check_optics(pixel_size_um, na, wavelength_um)
    structure = _as_real(structure)
    shape = tf.shape(structure)
    # float64 OTF: blur rounds it to the image's precision, so float64 images keep double precision.
    transfer = _otf64(shape[-2], shape[-1], pixel_size_um, na, wavelength_um)
    return bin2(blur(structure, transfer))


def sim_image(structure, pixel_size_um, na=1.3, wavelength_um=0.525):
    """The SIM-like target: the structure imaged with twice the widefield cut-off, on the fine grid.

    Steps:
      1. OTF of a pupil of radius 2 NA / lam (cut-off 4 NA / lam) on the fine grid, eq. (2) with NA -> 2 NA.
      2. Blur the structure with it, eq. (4). No binning: the target stays on the fine grid.

    Args:
      structure: float tensor [..., H, W]. rho on the fine grid.
      pixel_size_um: float or scalar tensor. dx, the fine grid's pitch in um.
      na: float or scalar tensor. NA of the widefield system (default 1.3); the target uses 2 NA.
      wavelength_um: float or scalar tensor. lam in um (default 0.525).

    Returns:
      float32 tensor [..., H, W] (float64 for float64 input); its sum equals the structure's.
    """
    _check_optics(pixel_size_um, na, wavelength_um)
    structure = _as_real(structure)
    shape = tf.shape(structure)
    transfer = _otf64(shape[-2], shape[-1], pixel_size_um, 2 * na, wavelength_um)
    return blur(structure, transfer)


def poisson_gaussian(image, photons, read_noise, seed):
    """Shot noise and camera read noise, in photon units, deterministic for a seed.

    `photons` is the expected number of photons per unit of image intensity (a gain, not a peak value), so
    the same structure gets the same exposure whatever else is in the batch, and binned images (4x the
    intensity of the fine grid) collect 4x the photons, as they should.

    Steps:
      1. Split `seed` into two independent stateless seeds (Poisson, Gaussian).
      2. Expected photons lambda = photons * max(image, 0) (negative rounding residue of the blur clipped).
      3. counts ~ Poisson(lambda) (tf.random.stateless_poisson).
      4. Add read noise ~ Normal(0, read_noise^2) (tf.random.stateless_normal).
      Mean = lambda, variance = lambda + read_noise^2.

    Args:
      image: float tensor [..., H, W]. Noise-free intensity, >= 0.
      photons: float or scalar tensor. N, expected photons per unit intensity, > 0.
      read_noise: float or scalar tensor. Read-noise standard deviation in photons, >= 0.
      seed: int tensor [2] (int32 or int64). Stateless seed.

    Returns:
      float32 tensor [..., H, W]: noisy photon counts (may be slightly negative through read noise).
    """
    check_positive(photons, "photons")
    if isinstance(read_noise, (int, float)) and read_noise < 0:
        raise InputError(f"read_noise must be >= 0 photons, got {read_noise}")
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    poisson_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    rate = tf.maximum(image, 0.0) * tf.cast(photons, tf.float32)
    counts = tf.random.stateless_poisson(tf.shape(rate), poisson_seed, rate, dtype=tf.float32)
    noise = tf.random.stateless_normal(tf.shape(rate), normal_seed, stddev=tf.cast(read_noise, tf.float32))
    return counts + noise


def psf(size, pixel_size_um, na, wavelength_um):
    """A small centred intensity PSF kernel, consistent with `otf`, e.g. for skimage's Richardson-Lucy.

    Steps:
      1. OTF of eq. (2) on an n x n grid, n = max(256, 4 size), large so that the pupil is well sampled and
         the periodic PSF's wrap-around (Airy tails) is negligible.
      2. PSF = Re IFFT2(OTF), fftshifted so that the centre is at [n // 2, n // 2].
      3. Crop size x size around the centre, clip rounding negatives, renormalise to sum 1.

    Args:
      size: odd int >= 1. Kernel width in pixels; the centre is pixel [size // 2, size // 2].
      pixel_size_um: float. dx, the pitch of the kernel's grid in um.
      na: float. NA.
      wavelength_um: float. lam in um.

    Returns:
      numpy float32 [size, size], non-negative, sum 1.
    """
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise InputError(f"psf size must be an odd int >= 1 (a kernel with a centre pixel), got {size}")
    _check_optics(pixel_size_um, na, wavelength_um)
    n = max(256, 4 * int(size))
    transfer = _otf64(n, n, pixel_size_um, na, wavelength_um).numpy()
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(transfer)))
    half = size // 2
    kernel = kernel[n // 2 - half : n // 2 + half + 1, n // 2 - half : n // 2 + half + 1].clip(0.0, None)
    return (kernel / kernel.sum()).astype(np.float32)


def _over_leading_axes(function, image):
    """Apply a numpy [H, W] -> [H', W'] function to every [H, W] slice of [..., H, W]."""
    image = np.asarray(image)
    if image.ndim < 2:
        raise InputError(f"expected an image [..., H, W], got shape {image.shape}")
    flat = image.reshape((-1,) + image.shape[-2:])
    out = np.stack([function(plane) for plane in flat])
    return out.reshape(image.shape[:-2] + out.shape[-2:])


def bicubic_up(image, factor):
    """Bicubic (cubic spline, skimage order 3) upsampling by an integer factor, a baseline.

    Pixel areas are aligned (skimage's grid mode): fine pixel centres sit inside the coarse pixel they split.
    Values keep their per-pixel units (interpolation, not photon redistribution) and are clipped to the input's
    range (skimage's `clip=True`), so no spline overshoot makes negative intensities.

    Args:
      image: numpy array [..., H, W].
      factor: int >= 1.

    Returns:
      numpy float32 [..., factor H, factor W].
    """
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise InputError(f"factor must be an int >= 1, got {factor}")

    def upsample(plane):
        shape = (plane.shape[0] * factor, plane.shape[1] * factor)
        return resize(plane.astype(np.float64), shape, order=3, mode="reflect", anti_aliasing=False)

    return _over_leading_axes(upsample, image).astype(np.float32)


def richardson_lucy_sr(widefield_image, pixel_size_um_fine, na, wavelength_um, iterations=20):
    """The classical SR baseline: bicubic 2x upsampling, then Richardson-Lucy with the widefield PSF.

    Steps:
      1. Upsample the widefield image 2x to the fine grid (`bicubic_up`), clip negatives (RL's model is
         Poisson: it needs a non-negative image, and read noise can make counts negative).
      2. Divide by the maximum: skimage's RL adds eps = 1e-12 to its denominators, which must be small next to
         the data; with clip=False no value is capped, so the scaling is undone exactly in step 4.
      3. skimage.restoration.richardson_lucy with `psf(...)` of the widefield system (NA, lam) on the fine
         grid, size 2 ceil(3 * 0.61 lam / NA / dx) + 1 (three Airy radii), `iterations` iterations.
      4. Multiply by the maximum again.

    RL's convolution is zero-padded ('same'), not periodic, so a few pixels at the border are less reliable.

    Args:
      widefield_image: numpy array [..., H, W]. Widefield image on the camera grid (pitch 2 dx).
      pixel_size_um_fine: float. dx, the fine grid's pitch in um.
      na: float. NA of the widefield system.
      wavelength_um: float. lam in um.
      iterations: int >= 1. RL iterations (more sharpens more and amplifies noise more).

    Returns:
      numpy float32 [..., 2 H, 2 W], in the per-pixel units of the input (as `bicubic_up`: divide by 4 for
      photons per fine pixel).
    """
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise InputError(f"iterations must be an int >= 1, got {iterations}")
    _check_optics(pixel_size_um_fine, na, wavelength_um)
    half = math.ceil(3 * _AIRY_FIRST_ZERO * wavelength_um / na / pixel_size_um_fine)
    kernel = psf(2 * half + 1, pixel_size_um_fine, na, wavelength_um).astype(np.float64)

    def deconvolve(plane):
        upsampled = bicubic_up(plane, 2).astype(np.float64).clip(0.0, None)
        scale = upsampled.max()
        if scale <= 0:
            return np.zeros_like(upsampled)
        estimate = richardson_lucy(upsampled / scale, kernel, num_iter=int(iterations), clip=False)
        return estimate * scale

    return _over_leading_axes(deconvolve, widefield_image).astype(np.float32)
