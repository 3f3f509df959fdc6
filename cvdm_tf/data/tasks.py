"""Tasks: how a ground-truth image becomes a (condition, target) pair, and the units on either side.

A task owns its forward physics, its noise models, its normalisation into the network's units and back, and its
classical baseline. Everything here is TensorFlow so it runs inside `tf.data` maps and inside an exported
SavedModel.

QPI (cvdm-math.md section 6), in order:
    1. phase phi in [0, phase_max] radians (the target);
    2. the 2-shot measurement (I(-dz), I(+dz)) of the thin phase object exp(i phi) by Fresnel propagation;
    3. noise: `paper` (Gaussian with mean and std lam_n, lam_n ~ U(0, noise_max) per pair), `poisson` (photon
       counts at `photons_per_pixel` plus Gaussian read noise), or `none`;
    4. normalisation: condition y = (I / mean(I) - 1) * CONDITION_GAIN (the pair divided by its own mean
       intensity, which removes the illumination level of a real microscope but keeps the contrast, the thing that
       encodes the phase, and is the same for a 64 px crop and a 2048 px image); with `tie_channel`, a third
       channel holds the FFT-TIE phase estimate in target units; target x = 2 (phi - mean(phi)) / phase_max.

The target is offset-free: intensities determine the phase only up to a constant (TIE has the same gauge), so
asking a network for the absolute offset of a crop would ask for something the measurement does not contain.
Reconstructions are zero-mean phase maps in radians; compare them offset-free (cvdm_tf.metrics.offset_free).
"""

from __future__ import annotations

import tensorflow as tf

from cvdm_tf.physics.fresnel import two_shot_intensities
from cvdm_tf.physics.tie import tie_fft

# Intensity contrast of the QPI pairs is a few percent to tens of percent; this gain brings it to order one.
CONDITION_GAIN = 4.0


class QPITask:
    """Quantitative phase imaging from a defocused intensity pair.

    Args:
        data: DataConfig. Physics (wavelength_um, pixel_size_um, defocus_um), phase_max and noise model.
    """

    name = "qpi"
    target_channels = 1
    target_unit = "rad"

    def __init__(self, data):
        self.data = data
        self.condition_channels = 3 if data.tie_channel else 2
        self.measurement_channels = 2

    # --- physics ---
    def measure(self, phase):
        """phase [..., H, W] (radians) -> noise-free raw intensities [..., H, W, 2] = (I(-dz), I(+dz))."""
        d = self.data
        return two_shot_intensities(phase, d.defocus_um, d.wavelength_um, d.pixel_size_um)

    def add_noise(self, intensities, seed, noise=None):
        """Noise model `noise` (default: the config's) on raw intensities [H, W, 2]; `seed` is a stateless seed [2]."""
        d = self.data
        noise = noise or d.noise
        if noise == "none":
            return intensities
        if noise == "paper":
            lam_n = tf.random.stateless_uniform([], seed=seed, maxval=d.noise_max)
            seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
            return intensities + lam_n + lam_n * tf.random.stateless_normal(tf.shape(intensities), seed=seed2)
        if noise == "poisson":
            counts = tf.random.stateless_poisson(
                tf.shape(intensities), seed=seed, lam=intensities * d.photons_per_pixel, dtype=tf.float32
            )
            seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
            read = d.read_noise * tf.random.stateless_normal(tf.shape(intensities), seed=seed2)
            return (counts + read) / d.photons_per_pixel
        raise ValueError(f"unknown noise model {noise!r}")

    # --- units ---
    def normalize_condition(self, intensities):
        """Raw intensities [..., H, W, 2] -> network condition y (per image: divided by its mean intensity;
        plus the TIE phase in target units with `tie_channel`). Apply it to whole images, before any tiling."""
        mean = tf.reduce_mean(intensities, axis=[-3, -2, -1], keepdims=True)
        y = (intensities / tf.maximum(mean, 1e-6) - 1.0) * CONDITION_GAIN
        if self.data.tie_channel:
            tie = self.baseline(intensities, self.data.tie_regularization)
            y = tf.concat([y, 2.0 * tie / self.data.phase_max], axis=-1)
        return y

    def normalize_target(self, phase):
        """phase [..., H, W] radians -> x [..., H, W, 1], offset-free: 2 (phi - mean(phi)) / phase_max."""
        phase = phase - tf.reduce_mean(phase, axis=[-2, -1], keepdims=True)
        return (2.0 * phase / self.data.phase_max)[..., None]

    def denormalize_target(self, x):
        """x [..., H, W, 1] -> phase in radians [..., H, W, 1] (a rescaling; targets were zero-mean, since the
        phase is known only up to a constant)."""
        return x * (self.data.phase_max / 2.0)

    def denormalize_spread(self, std):
        """A standard deviation in x units -> radians."""
        return std * (self.data.phase_max / 2.0)

    # --- pairs and baseline ---
    def pair(self, phase, seed):
        """One training pair from a phase crop [H, W]: (y [H, W, 2], x [H, W, 1])."""
        intensities = self.add_noise(self.measure(phase), seed)
        return self.normalize_condition(intensities), self.normalize_target(phase)

    def baseline(self, intensities, regularization=1e-6):
        """The classical answer: FFT TIE phase (zero-mean radians) [..., H, W, 1]."""
        d = self.data
        phase = tie_fft(intensities, d.defocus_um, d.wavelength_um, d.pixel_size_um, regularization)
        return phase[..., None]


def make_task(task: str, data_config):
    if task == "qpi":
        return QPITask(data_config)
    from cvdm_tf.errors import InputError

    raise InputError(f"unknown task {task!r} (known: qpi)")
