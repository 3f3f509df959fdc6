"""Fresnel free-space propagation and the two-shot defocus measurement of a thin phase object.

The physics is cvdm-math.md section 6 (Goodman, *Introduction to Fourier Optics*, 3rd ed., eq. 4-21): the
Fresnel transfer function

    H(fx, fy) = exp(i 2 pi z / lam) * exp(-i pi lam z (fx^2 + fy^2))                        (6.1)
    E_z = IFFT2( FFT2(E_0) * H ),   fx = fftfreq(W, d=dx),  fy = fftfreq(H, d=dx)             (6.2)
    I_z = |E_z|^2                                                                            (6.3)

Sign convention: fields carry exp(+i k z) (time dependence exp(-i omega t)), as in Goodman. A converging lens
is then exp(-i k r^2 / 2f), so a positive phase bump (phase maximal at its centre, negative curvature) focuses:
its centre gets brighter for z > 0, which is what the transport-of-intensity equation
-k dI/dz = div(I grad phi) says, since laplacian(phi) < 0 there.

Notation (all lengths in micrometres, one unit for all of them):

    symbol      code name            units
    z           distance_um          um (signed; z > 0 propagates downstream)
    dz          defocus_um           um (the two shots are at -dz and +dz)
    lam         wavelength_um        um
    dx          pixel_size_um        um (square pixels)
    k           2 pi / lam           rad / um
    fx, fy      fft_frequencies(...)    cycles / um (numpy.fft.fftfreq ordering)
    H           transfer_function    complex, |H| = 1
    E_0, E_z    field                complex amplitude, sqrt(intensity units)
    phi         phase                rad
    A           amplitude            sqrt(intensity units), defaults to 1

Choices where section 6 is silent:
- Propagation is periodic by default (the FFT's circular convolution), which is what the reference simulation
  does; the field is assumed to tile the plane. `pad > 0` zero-pads the field by `pad` pixels on every side,
  propagates on the larger grid and crops back: light leaving the window is then lost instead of wrapping
  around (no energy conservation inside the crop), and the window's edge acts as an opaque aperture. Zero
  padding is the physically honest "nothing outside the field of view" option; edge-value padding would invent
  light that is not there.
- The phase of H is computed in float64 and reduced modulo 2 pi before it is rounded to float32, so the carrier
  exp(i 2 pi z / lam) (about 1200 rad at z = 100 um) does not lose precision. complex64 is the working type;
  a complex128 field (or a float64 phase) is propagated in complex128 and returned as such, for tests and
  reference computations that need the precision.
- Physical parameters may be python numbers or scalar tensors; shapes come from `tf.shape`, so everything runs
  inside `tf.function` and `tf.data` maps with unknown H, W and any number of leading batch dimensions.
"""

import math

import tensorflow as tf

from cvdm_tf.errors import InputError
from cvdm_tf.physics.grids import check_positive, even_extension, fft_frequencies, float64

__all__ = ["transfer_function", "propagate", "two_shot_intensities"]

_TWO_PI = 2.0 * math.pi


def _transfer_function(height, width, distance_um, wavelength_um, pixel_size_um, dtype):
    """Eq. (6.1) on an H x W grid, as `dtype` (complex64 or complex128)."""
    z = float64(distance_um)
    lam = float64(wavelength_um)
    fx = fft_frequencies(width, pixel_size_um)[tf.newaxis, :]
    fy = fft_frequencies(height, pixel_size_um)[:, tf.newaxis]
    # Both terms reduced mod 2 pi in float64 first: the carrier alone is 2 pi z / lam ~ 1e3 rad.
    carrier = tf.math.floormod(_TWO_PI * z / lam, _TWO_PI)
    chirp = tf.math.floormod(math.pi * lam * z * (fx * fx + fy * fy), _TWO_PI)
    phase = carrier - chirp
    real_dtype = tf.float32 if dtype == tf.complex64 else tf.float64
    phase = tf.cast(phase, real_dtype)
    return tf.complex(tf.cos(phase), tf.sin(phase))


def transfer_function(height, width, distance_um, wavelength_um, pixel_size_um):
    """Goodman's Fresnel transfer function H(fx, fy), eq. (6.1) of cvdm-math.md section 6.

    Steps:
      1. fx = fftfreq(width, d=dx), fy = fftfreq(height, d=dx) in cycles / um (unshifted FFT order).
      2. phase = 2 pi z / lam - pi lam z (fx^2 + fy^2), each term reduced mod 2 pi in float64.
      3. H = exp(i phase), rounded to complex64.

    Args:
      height: int or scalar int tensor. H, number of rows.
      width: int or scalar int tensor. W, number of columns.
      distance_um: float or scalar tensor. Propagation distance z in um (signed).
      wavelength_um: float or scalar tensor. Vacuum wavelength lam in um.
      pixel_size_um: float or scalar tensor. Pixel pitch dx in um.

    Returns:
      complex64 tensor [H, W], ready to multiply `tf.signal.fft2d(field)` with.
    """
    check_positive(wavelength_um, "wavelength_um")
    check_positive(pixel_size_um, "pixel_size_um")
    return _transfer_function(height, width, distance_um, wavelength_um, pixel_size_um, tf.complex64)


def _as_field(field):
    """complex128 stays complex128 (precision on request); anything else becomes complex64."""
    field = tf.convert_to_tensor(field)
    if field.dtype in (tf.complex128, tf.float64):
        return tf.cast(field, tf.complex128)
    return tf.cast(field, tf.complex64)


def _pad_last_two(tensor, pad):
    """Zero-pad the last two axes by `pad` pixels on each side (leading axes untouched, any rank)."""
    rank = tf.rank(tensor)
    paddings = tf.concat(
        [tf.zeros([rank - 2, 2], tf.int32), tf.fill([2, 2], tf.constant(pad, tf.int32))], axis=0
    )
    return tf.pad(tensor, paddings)


def _crop_last_two(tensor, pad):
    return tensor[..., pad:-pad, pad:-pad]


def _propagate_many(field, distances_um, wavelength_um, pixel_size_um, pad):
    """Propagate one field to several distances with one forward FFT: returns [len(distances), ..., H, W]."""
    field = _as_field(field)
    if pad:
        field = _pad_last_two(field, pad)
    shape = tf.shape(field)
    height, width = shape[-2], shape[-1]
    spectrum = tf.signal.fft2d(field)
    outputs = []
    for distance_um in distances_um:
        transfer = _transfer_function(height, width, distance_um, wavelength_um, pixel_size_um, field.dtype)
        propagated = tf.signal.ifft2d(spectrum * transfer)
        outputs.append(_crop_last_two(propagated, pad) if pad else propagated)
    return outputs


def propagate(field, distance_um, wavelength_um=0.521, pixel_size_um=0.21, pad=0):
    """Fresnel-propagate a complex field by `distance_um`, eqs. (6.1)-(6.2) of cvdm-math.md section 6.

    Steps:
      1. Cast the field to complex64 (complex128 / float64 inputs stay in double precision).
      2. If `pad` > 0, zero-pad the last two axes by `pad` pixels on each side (non-periodic propagation).
      3. E_z = IFFT2( FFT2(E_0) * H ) with H from eq. (6.1) on the (padded) grid.
      4. Crop the padding off again.

    Args:
      field: complex (or real) tensor [..., H, W]. E_0, sampled at pitch dx; leading axes are batch axes.
      distance_um: float or scalar tensor. z in um; negative z propagates upstream.
      wavelength_um: float or scalar tensor. lam in um (default 0.521, the paper's).
      pixel_size_um: float or scalar tensor. dx in um (default 0.21, the paper's).
      pad: python int >= 0. Zero padding in pixels per side; 0 (default) is periodic propagation.

    Returns:
      complex64 tensor [..., H, W] (complex128 for complex128 / float64 input): E_z.
    """
    check_positive(wavelength_um, "wavelength_um")
    check_positive(pixel_size_um, "pixel_size_um")
    if int(pad) < 0:
        raise InputError(f"pad must be >= 0 pixels, got {pad}")
    (propagated,) = _propagate_many(field, [distance_um], wavelength_um, pixel_size_um, int(pad))
    return propagated


def transmittance(phase, amplitude=None):
    """The thin object's complex transmittance amplitude * exp(i phase): complex64 (complex128 for a float64
    phase), the shape of `phase`; amplitude None means 1 (a pure phase object)."""
    phase = tf.convert_to_tensor(phase)
    real_dtype = tf.float64 if phase.dtype == tf.float64 else tf.float32
    phase = tf.cast(phase, real_dtype)
    field = tf.complex(tf.cos(phase), tf.sin(phase))
    if amplitude is not None:
        field = field * tf.cast(tf.convert_to_tensor(amplitude), field.dtype)
    return field


def two_shot_intensities(phase, defocus_um=1.0, wavelength_um=0.521, pixel_size_um=0.21, amplitude=None, pad=0,
                         boundary="periodic"):
    """The two-shot defocus measurement (I(-dz), I(+dz)) of a thin object, cvdm-math.md section 6.

    Steps:
      1. E_0 = A exp(i phi), A = 1 unless `amplitude` is given (thin-object approximation).
      2. Propagate E_0 to z = -dz and z = +dz, eqs. (6.1)-(6.2), sharing one forward FFT.
      3. I = |E|^2, eq. (6.3), stacked on a new last axis in the order (I(-dz), I(+dz)).

    Args:
      phase: float32 tensor [..., H, W]. phi in rad.
      defocus_um: float or scalar tensor. dz in um (default 1.0).
      wavelength_um: float or scalar tensor. lam in um (default 0.521).
      pixel_size_um: float or scalar tensor. dx in um (default 0.21).
      amplitude: optional float tensor broadcastable to [..., H, W]. A, the object's amplitude transmission.
      pad: python int >= 0. Zero padding per side, see `propagate`.
      boundary: "periodic" (the FFT's: the object repeats, so a crop's opposite edges meet with a phase jump no
        microscope sees) or "mirror" (propagate the even extension, 2H x 2W, and keep the first H x W: the
        object continues as its mirror image: Neumann boundaries, those of `tie_dct`).

    Returns:
      float32 tensor [..., H, W, 2] (float64 for a float64 phase): channel 0 is I(-dz), channel 1 is I(+dz).
      For a unit-amplitude object the mean intensity is 1 (periodic propagation conserves energy).
    """
    check_positive(wavelength_um, "wavelength_um")
    check_positive(pixel_size_um, "pixel_size_um")
    if int(pad) < 0:
        raise InputError(f"pad must be >= 0 pixels, got {pad}")
    if boundary not in ("periodic", "mirror"):
        raise InputError(f"boundary must be 'periodic' or 'mirror', got {boundary!r}")
    field = transmittance(phase, amplitude)
    if boundary == "mirror":
        height, width = tf.shape(field)[-2], tf.shape(field)[-1]
        field = even_extension(field)
    defocus = float64(defocus_um)
    before, after = _propagate_many(field, [-defocus, defocus], wavelength_um, pixel_size_um, int(pad))
    intensities = [tf.math.real(e) ** 2 + tf.math.imag(e) ** 2 for e in (before, after)]
    intensities = tf.stack(intensities, axis=-1)
    if boundary == "mirror":
        intensities = intensities[..., :height, :width, :]
    return intensities
