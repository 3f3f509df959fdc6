"""The convolutional networks: one U-Net builder serves the denoiser eps_hat(z_t, y, gamma), the schedule's tau(y)
and the optional mean network of zero-mean diffusion.

All U-Nets are fully convolutional (spatial dims None), so a model trained on 64 x 64 crops runs on any image whose
sides are divisible by 2**depth; `pad_to_multiple` / `crop_to` handle other sizes. They are functional Keras models
made of built-in layers only, so they serialise without custom code.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def _norm(kind: str, filters: int, name: str):
    if kind == "none":
        return None
    if kind == "instance":
        # Instance normalisation is group normalisation with one group per channel.
        return layers.GroupNormalization(groups=-1, name=name)
    return layers.GroupNormalization(groups=min(8, filters), name=name)


def _res_block(x, filters: int, kernel_size: int, norm: str, name: str):
    """Pre-activation residual block: (norm, swish, conv) x 2 plus a 1x1 projection skip."""
    skip = x if x.shape[-1] == filters else layers.Conv2D(filters, 1, name=f"{name}_skip")(x)
    for i in (1, 2):
        normaliser = _norm(norm, x.shape[-1], f"{name}_norm{i}")
        if normaliser is not None:
            x = normaliser(x)
        x = layers.Activation("swish", name=f"{name}_act{i}")(x)
        x = layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_conv{i}")(x)
    return layers.Add(name=f"{name}_add")([skip, x])


def unet(
    input_channels: int,
    output_channels: int,
    base_filters: int = 16,
    depth: int = 3,
    kernel_size: int = 3,
    blocks_per_level: int = 1,
    norm: str = "group",
    output_activation: str | None = None,
    output_bias: float = 0.0,
    name: str = "unet",
) -> keras.Model:
    """A U-Net: `depth` down-sampling levels with widths base_filters * 2**level, skip connections by concatenation.

    Args:
        input_channels: int. Channels of the (concatenated) input.
        output_channels: int. Channels of the output.
        base_filters: int. Width of the first level; level l has base_filters * 2**l filters.
        depth: int. Number of halvings; inputs must be divisible by 2**depth.
        kernel_size: int. Convolution kernel size.
        blocks_per_level: int. Residual blocks per level, on the way down and up.
        norm: str. "group", "instance" or "none".
        output_activation: str or None. E.g. "softplus" for the positive tau(y).
        output_bias: float. Initial bias of the output layer (its kernel starts at zero, so the network starts as
            this constant: a known, well-scaled starting schedule for tau, zero for eps).
        name: str. Model name.
    """
    inputs = keras.Input(shape=(None, None, input_channels), name=f"{name}_input")
    x = layers.Conv2D(base_filters, kernel_size, padding="same", name=f"{name}_stem")(inputs)
    skips = []
    for level in range(depth):
        filters = base_filters * 2**level
        for b in range(blocks_per_level):
            x = _res_block(x, filters, kernel_size, norm, f"{name}_down{level}_{b}")
        skips.append(x)
        x = layers.AveragePooling2D(2, name=f"{name}_pool{level}")(x)
    x = _res_block(x, base_filters * 2**depth, kernel_size, norm, f"{name}_mid")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up{level}")(x)
        x = layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_upconv{level}")(x)
        x = layers.Concatenate(name=f"{name}_cat{level}")([x, skips[level]])
        for b in range(blocks_per_level):
            x = _res_block(x, filters, kernel_size, norm, f"{name}_up{level}_{b}")
    normaliser = _norm(norm, x.shape[-1], f"{name}_out_norm")
    if normaliser is not None:
        x = normaliser(x)
    x = layers.Activation("swish", name=f"{name}_out_act")(x)
    outputs = layers.Conv2D(
        output_channels,
        1,
        activation=output_activation,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(output_bias),
        name=f"{name}_out",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def backbone(model_config, input_channels: int, output_channels: int, noise_channels: int = 0,
             name: str = "unet") -> keras.Model:
    """The network `model_config.denoiser` names ("unet" or "sr3"), with the config's widths and depth.

    Args:
        model_config: ModelConfig.
        input_channels: int. Channels of the (concatenated) input.
        output_channels: int. Channels of the output.
        noise_channels: int. The last input channels that hold the noise level gamma (the denoiser: the target's
            channel count; 0 for networks of the condition alone). The U-Net reads them as plain channels; SR3
            also embeds them in every block.
        name: str. Model name.
    """
    c = model_config
    if c.denoiser == "sr3":
        from cvdm_tf.sr3 import sr3_unet

        return sr3_unet(input_channels, output_channels, noise_channels, c.base_filters, c.depth, c.kernel_size,
                        c.blocks_per_level, name=name)
    return unet(input_channels, output_channels, c.base_filters, c.depth, c.kernel_size, c.blocks_per_level,
                c.norm, name=name)


# === Sizes ===


def pad_to_multiple(image: tf.Tensor, multiple: int):
    """Reflect-pad [B, H, W, C] at the bottom/right so H and W are multiples of `multiple`; returns (padded, (H, W))."""
    shape = tf.shape(image)
    height, width = shape[1], shape[2]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    # Reflection needs pad < size; symmetric padding works for any pad up to the size itself.
    padded = tf.pad(image, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")
    return padded, (height, width)


def crop_to(image: tf.Tensor, size) -> tf.Tensor:
    height, width = size
    return image[:, :height, :width, :]
