"""What the Fourier-optics modules share: float64 without a float32 detour, FFT frequency grids, the even
extension, argument checks."""

from __future__ import annotations

import tensorflow as tf

from cvdm_tf.errors import InputError


def check_positive(value, name):
    """Reject non-positive python numbers early; tensors are trusted (they may be symbolic)."""
    if isinstance(value, (int, float)) and not value > 0:
        raise InputError(f"{name} must be > 0, got {value}")


def float64(value):
    """A python number or tensor as a float64 tensor, without a float32 detour.

    tf.cast(0.521, tf.float64) would first make a float32 constant (0.52100003): a 5e-8 relative error in lam
    that becomes a visible phase error in the carrier 2 pi z / lam.
    """
    if isinstance(value, (int, float)):
        return tf.constant(value, tf.float64)
    return tf.cast(value, tf.float64)


def fft_frequencies(n, pixel_size_um):
    """numpy.fft.fftfreq(n, d=pixel_size_um) for a possibly symbolic n, in float64 (cycles / um)."""
    n = tf.convert_to_tensor(n, tf.int32)
    index = tf.range(n)
    # fftfreq order: 0, 1, ..., ceil(n/2) - 1, then -floor(n/2), ..., -1.
    index = tf.where(index < (n + 1) // 2, index, index - n)
    return tf.cast(index, tf.float64) / (tf.cast(n, tf.float64) * float64(pixel_size_um))


def even_extension(image):
    """[..., H, W] -> [..., 2H, 2W], the even (half-sample) mirror extension: periodic and continuous, so an FFT
    on it is a DCT-II on the H x W original (Neumann boundaries, no wrap-around jump)."""
    image = tf.concat([image, tf.reverse(image, axis=[-1])], axis=-1)
    return tf.concat([image, tf.reverse(image, axis=[-2])], axis=-2)
