"""How noisy is an image? Immerkaer's blind estimate of white Gaussian noise, from the image alone.

Immerkaer (1996, "Fast noise variance estimation", CVIU 64(2)) filters the image with the difference of two
discrete Laplacians,

    N = [[ 1, -2,  1],
         [-2,  4, -2],
         [ 1, -2,  1]]

which cancels every polynomial of degree <= 1 in each axis (so smooth structure), while white noise of standard
deviation sigma comes out with standard deviation 6 sigma (the squared kernel sums to 36). For a Gaussian, the
mean absolute value is sqrt(2 / pi) times the standard deviation, so

    sigma ~= sqrt(pi / 2) / (6 (H - 2) (W - 2)) * sum |I * N|       (valid pixels only)

Edges and fine texture leak through the filter and bias the estimate up; defocused intensities of cells are
smooth, and on the cell phantoms the estimate is within 1% of the noise they were given (tests/test_noise_estimate).
"""

from __future__ import annotations

import math

import tensorflow as tf

_KERNEL = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))


def immerkaer_sigma(images):
    """Noise standard deviation of each image, averaged over its channels.

    Args:
      images: float tensor [..., H, W, C], H and W >= 3.

    Returns:
      float32 tensor [...]: sigma in the images' units.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    height, width, channels = shape[-3], shape[-2], shape[-1]
    flat = tf.reshape(images, tf.stack([-1, height, width, channels]))
    # One copy of N per channel: [3, 3, C, 1] for a depthwise convolution.
    kernel = tf.tile(tf.constant(_KERNEL)[:, :, None, None], tf.stack([1, 1, channels, 1]))
    response = tf.nn.depthwise_conv2d(flat, kernel, strides=[1, 1, 1, 1], padding="VALID")
    valid = tf.cast((height - 2) * (width - 2) * channels, tf.float32)
    sigma = math.sqrt(math.pi / 2.0) / 6.0 * tf.reduce_sum(tf.abs(response), axis=[1, 2, 3]) / valid
    return tf.reshape(sigma, shape[:-3])
