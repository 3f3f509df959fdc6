"""The SR3 denoiser (Saharia et al. 2021), generalised to CVDM's per-pixel noise level.

SR3 is a U-Net of residual blocks with group normalisation, a noise-level embedding added in every block and
self-attention at the lowest resolution. In SR3 the noise level is one number per image; in CVDM it is a map
gamma(t, y) [B, H, W, C_x] (the learned schedule is per pixel), so the embedding is made per pixel:

    gamma [B, H, W, C_x]  (the last C_x input channels, as the plain U-Net receives it)
      -> log-SNR s = log(gamma / (1 - gamma)), clipped to [-LOG_SNR_MAX, LOG_SNR_MAX]
      -> sinusoidal features (s / LOG_SNR_MAX, sin(pi 2^k s / LOG_SNR_MAX), cos(...)), k < frequencies
      -> 1x1 conv MLP (two swish layers, `4 * base_filters` wide): e [B, H, W, E]
      -> average-pooled to each level's resolution; each residual block adds a 1x1 projection of it to its
         features (a per-pixel bias; with a constant gamma map exactly SR3's per-image bias)

Everything else (stem, pooling, up-sampling, skips) matches `networks.unet`, so it takes the same input
(concat of z_t, y, gamma) and runs on any size divisible by 2**depth. With `noise_channels = 0` it is the same
network without the embedding (the regression baseline and the mean network have no noise level).

References:
    Saharia, Ho, Chan, Salimans, Fleet, Norouzi. Image Super-Resolution via Iterative Refinement.
        arXiv:2104.07636 (2021).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

LOG_SNR_MAX = 20.0  # |log-SNR| beyond this is noise-free / pure noise for float32 images


@keras.saving.register_keras_serializable(package="cvdm_tf")
class NoiseLevelFeatures(layers.Layer):
    """gamma [B, H, W, C] -> per-pixel sinusoidal features of its log-SNR [B, H, W, C (1 + 2 frequencies)].

    Args:
        frequencies: int. Number of octaves k = 0 .. frequencies - 1 of sin / cos(pi 2^k s / LOG_SNR_MAX).
    """

    def __init__(self, frequencies: int = 6, **kwargs):
        super().__init__(**kwargs)
        self.frequencies = frequencies

    def call(self, gamma):
        gamma = tf.cast(gamma, self.compute_dtype)
        # Both logs floored: gamma rounds to 1 at t ~ 0 and underflows at t ~ 1 (finite values and gradients).
        log_snr = tf.math.log(tf.maximum(gamma, 1e-30)) - tf.math.log(tf.maximum(1.0 - gamma, 1e-30))
        s = tf.clip_by_value(log_snr, -LOG_SNR_MAX, LOG_SNR_MAX) / LOG_SNR_MAX
        angles = [s * (math.pi * 2.0**k) for k in range(self.frequencies)]
        return tf.concat([s] + [tf.sin(a) for a in angles] + [tf.cos(a) for a in angles], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] * (1 + 2 * self.frequencies))

    def get_config(self):
        return {**super().get_config(), "frequencies": self.frequencies}


@keras.saving.register_keras_serializable(package="cvdm_tf")
class ChannelSlice(layers.Layer):
    """x[..., start:stop] (a named, serialisable slice: the gamma channels of the denoiser's input)."""

    def __init__(self, start: int, stop: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        channels = len(range(input_shape[-1])[self.start:self.stop]) if input_shape[-1] else None
        return (*input_shape[:-1], channels)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="cvdm_tf")
class SpatialSelfAttention(layers.Layer):
    """Residual self-attention over all H * W positions of a feature map (SR3's attention block):
    x + MHA(norm(x)) with the positions flattened to a sequence, so every output pixel sees the whole map.

    Args:
        heads: int. Attention heads.
        key_dim: int. Size of each head's queries and keys.
        groups: int. Groups of the group normalisation before attention.
    """

    def __init__(self, heads: int = 1, key_dim: int = 32, groups: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.key_dim, self.groups = heads, key_dim, groups
        self.norm = layers.GroupNormalization(groups=groups, name="norm")
        self.attention = layers.MultiHeadAttention(heads, key_dim, name="attention")

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm.build(input_shape)
        self.attention.build((None, None, channels), (None, None, channels))
        self.built = True

    def call(self, x):
        shape = tf.shape(x)
        sequence = tf.reshape(self.norm(x), [shape[0], shape[1] * shape[2], x.shape[-1]])
        attended = self.attention(sequence, sequence)
        return x + tf.reshape(attended, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "key_dim": self.key_dim, "groups": self.groups}


def _block(x, embedding, filters: int, kernel_size: int, name: str):
    """SR3's residual block: GN, swish, conv; + a projection of the noise embedding; GN, swish, conv; + skip."""
    skip = x if x.shape[-1] == filters else layers.Conv2D(filters, 1, name=f"{name}_skip")(x)
    h = layers.GroupNormalization(groups=min(8, x.shape[-1]), name=f"{name}_norm1")(x)
    h = layers.Activation("swish", name=f"{name}_act1")(h)
    h = layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_conv1")(h)
    if embedding is not None:
        h = layers.Add(name=f"{name}_noise")([h, layers.Conv2D(filters, 1, name=f"{name}_emb")(embedding)])
    h = layers.GroupNormalization(groups=min(8, filters), name=f"{name}_norm2")(h)
    h = layers.Activation("swish", name=f"{name}_act2")(h)
    h = layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_conv2")(h)
    return layers.Add(name=f"{name}_add")([skip, h])


def sr3_unet(
    input_channels: int,
    output_channels: int,
    noise_channels: int = 0,
    base_filters: int = 16,
    depth: int = 3,
    kernel_size: int = 3,
    blocks_per_level: int = 1,
    attention_heads: int = 1,
    frequencies: int = 6,
    name: str = "sr3",
) -> keras.Model:
    """The SR3 U-Net with a per-pixel noise-level embedding (see the module docstring).

    Args:
        input_channels: int. Channels of the (concatenated) input.
        output_channels: int. Channels of the output (its kernel starts at zero: the network starts at 0).
        noise_channels: int. The last `noise_channels` input channels hold gamma; 0: no noise embedding.
        base_filters: int. Width of the first level; level l has base_filters * 2**l filters.
        depth: int. Number of halvings; inputs must be divisible by 2**depth.
        kernel_size: int. Convolution kernel size.
        blocks_per_level: int. Residual blocks per level, on the way down and up.
        attention_heads: int. Heads of the self-attention in the middle (lowest resolution).
        frequencies: int. Octaves of the sinusoidal noise-level features.
        name: str. Model name.

    Returns:
        keras.Model: functional, [B, H, W, input_channels] -> [B, H, W, output_channels].

    Example:
        net = sr3_unet(2 * 3 + 3, 3, noise_channels=3, base_filters=16, depth=3)   # z_t, y, gamma -> eps_hat
    """
    inputs = keras.Input(shape=(None, None, input_channels), name=f"{name}_input")
    embeddings = [None] * (depth + 1)
    if noise_channels:
        # === Noise-level embedding, per pixel, pooled to every level ===
        gamma = ChannelSlice(input_channels - noise_channels, None, name=f"{name}_gamma")(inputs)
        e = NoiseLevelFeatures(frequencies, name=f"{name}_noise_features")(gamma)
        width = 4 * base_filters
        e = layers.Conv2D(width, 1, activation="swish", name=f"{name}_emb_dense1")(e)
        e = layers.Conv2D(width, 1, activation="swish", name=f"{name}_emb_dense2")(e)
        embeddings = [e] + [layers.AveragePooling2D(2**level, name=f"{name}_emb_pool{level}")(e)
                            for level in range(1, depth + 1)]
    # === U-Net ===
    x = layers.Conv2D(base_filters, kernel_size, padding="same", name=f"{name}_stem")(inputs)
    skips = []
    for level in range(depth):
        filters = base_filters * 2**level
        for b in range(blocks_per_level):
            x = _block(x, embeddings[level], filters, kernel_size, f"{name}_down{level}_{b}")
        skips.append(x)
        x = layers.AveragePooling2D(2, name=f"{name}_pool{level}")(x)
    filters = base_filters * 2**depth
    x = _block(x, embeddings[depth], filters, kernel_size, f"{name}_mid1")
    x = SpatialSelfAttention(attention_heads, max(filters // attention_heads, 8), groups=min(8, filters),
                             name=f"{name}_attention")(x)
    x = _block(x, embeddings[depth], filters, kernel_size, f"{name}_mid2")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up{level}")(x)
        x = layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_upconv{level}")(x)
        x = layers.Concatenate(name=f"{name}_cat{level}")([x, skips[level]])
        for b in range(blocks_per_level):
            x = _block(x, embeddings[level], filters, kernel_size, f"{name}_up{level}_{b}")
    x = layers.GroupNormalization(groups=min(8, x.shape[-1]), name=f"{name}_out_norm")(x)
    x = layers.Activation("swish", name=f"{name}_out_act")(x)
    outputs = layers.Conv2D(output_channels, 1, kernel_initializer="zeros", name=f"{name}_out")(x)
    return keras.Model(inputs, outputs, name=name)
