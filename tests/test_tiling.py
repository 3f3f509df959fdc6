"""Tiled against untiled `reconstruct` with a random-weight U-Net (issue 24): the 2x task's blend and the QPI task's
per-tile offsets, compared pixel by pixel with the whole image sampled in one piece.

The model is a CVDM with random weights whose noise prediction is the exact one for a point mass at u(y), u its own
denoiser U-Net applied to the condition: DDIM then returns u(y) whatever z_T, so a tile's samples equal the whole
image's wherever the tile's U-Net sees what the whole image's sees, i.e. farther than the receptive field from the
tile's inner edges. No CLI and no config file is used (they come from the editable install, not this tree)."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.config import ModelConfig
from cvdm_tf.inference import reconstruct
from cvdm_tf.model import CVDM
from cvdm_tf.tiling import tile_starts

TINY_UNETS = dict(target_channels=1, base_filters=4, depth=2, tau_base_filters=4, tau_depth=1, time_units=4,
                  norm="none", mean="condition")  # norm "none", as every shipped config: group norm sees the whole tile


class PointMassAtTheDenoiser(CVDM):
    """eps_hat(z, y, g) = (z - sqrt(g) u(y)) / sqrt(1 - g), u(y) = the denoiser U-Net on (0, y, 1): x_hat = u(y) at
    every step. `offset_free`: u shifted so that the tile's result (u / residual_scale + the prior mean) has zero
    mean over the tile, as a QPI model that cannot know the mean phase of what it sees."""

    def __init__(self, model_config, offset_free=False):
        super().__init__(model_config)
        self.offset_free = offset_free

    def call(self, inputs):
        z, y, g = inputs
        u = tf.cast(self.denoiser(tf.concat([tf.zeros_like(z), y, tf.ones_like(g)], axis=-1)), tf.float32)
        if self.offset_free:  # the tile's x = u / scale + prior mean, made zero-mean over the tile
            scale = self.model_config.residual_scale
            u = u - scale * tf.reduce_mean(u / scale + self.prior_mean(y), axis=[1, 2], keepdims=True)
        return (z - tf.sqrt(g) * u) / tf.sqrt(tf.maximum(1.0 - g, 1e-12))


def random_model(model_config, offset_free=False, seed=0):
    """A `PointMassAtTheDenoiser` with random weights, the same in every run: Keras' initial weights from
    `keras.utils.set_random_seed`, then every weight of the denoiser moved by N(0, 0.3^2) (its output kernel starts
    at zero) and the tau U-Net's by N(0, 0.05^2), so tau(y) varies by a few percent across the image (larger moves
    put it anywhere in 1e-9..30)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = PointMassAtTheDenoiser(model_config, offset_free)
    rng = np.random.default_rng(seed)
    for network, scale in ((model.denoiser, 0.3), (model.schedule.tau_net, 0.05)):
        for variable in network.trainable_variables:
            variable.assign(variable + scale * rng.normal(size=variable.shape).astype(np.float32))
    return model


def output_scaled(model, condition, std):
    """The denoiser's output layer rescaled so that u(condition) has standard deviation `std`: a random U-Net's
    output is otherwise arbitrary in size (tens on the QPI condition), and a diffusion target that large would
    only show the clips."""
    condition = tf.convert_to_tensor(condition[None], tf.float32)
    ones = tf.ones_like(condition[..., :1])
    u = model.denoiser(tf.concat([0 * ones, condition, ones], axis=-1)).numpy()
    layer = model.denoiser.get_layer("denoiser_out")
    layer.set_weights([w * std / u.std() for w in layer.get_weights()])
    return model


def receptive_radius(network, channels, size=96):
    """How far (px) from an output pixel the inputs that reach it lie: the support of the gradient of the centre
    output with respect to a random input."""
    image = tf.Variable(tf.random.stateless_normal([1, size, size, channels], seed=[1, 2]))
    with tf.GradientTape() as tape:
        centre = network(image)[0, size // 2, size // 2, 0]
    rows, cols = np.nonzero(np.abs(tape.gradient(centre, image).numpy()[0]).sum(axis=-1) > 0)
    return int(max(size // 2 - rows.min(), rows.max() - size // 2, size // 2 - cols.min(), cols.max() - size // 2))


def far_from_tile_edges(shape, tile, radius):
    """Pixels farther than `radius` from the inner edges (those not on the image border) of every tile that covers
    them, for `reconstruct`'s tiles (side `tile`, a quarter of it overlap)."""
    height, width = shape
    tile_h, tile_w = min(tile, height), min(tile, width)
    far = np.ones(shape, bool)
    for r in tile_starts(height, tile_h, tile_h // 4):
        for c in tile_starts(width, tile_w, tile_w // 4):
            rows, cols = np.mgrid[r:r + tile_h, c:c + tile_w]
            distance = np.full((tile_h, tile_w), np.inf)
            for inner, d in ((r > 0, rows - r), (r + tile_h < height, r + tile_h - 1 - rows),
                             (c > 0, cols - c), (c + tile_w < width, c + tile_w - 1 - cols)):
                if inner:
                    distance = np.minimum(distance, d)
            far[r:r + tile_h, c:c + tile_w] &= distance >= radius
    return far


# A 320 x 272 px output grid in 192 px tiles: the overlap, 48 px, is at least the depth-2 U-Net's receptive radius,
# 27 px, and the tiles start at rows 0, 128 and columns 0, 80, multiples of the U-Net's 4 (a tile starting elsewhere
# would see the pooling grid shifted, and a U-Net is not shift-equivariant).
SHAPE, TILE = (320, 272), 192
OPTIONS = dict(samples=2, steps=3, method="ddim", seed=0)


@pytest.fixture(scope="module")
def biosr_case():
    from skimage.filters import gaussian

    from cvdm_tf.tasks.biosr import BioSRTask, DataConfig

    task = BioSRTask(DataConfig())
    smooth = gaussian(np.random.default_rng(0).uniform(size=(SHAPE[0] // 2, SHAPE[1] // 2)), sigma=2)
    raw = (20 + 400 * smooth).astype(np.float32)[..., None]  # a widefield image of 20..420 counts
    model = random_model(ModelConfig(condition_channels=1, x_range=2.0, target_range=1.0, **TINY_UNETS))
    return output_scaled(model, task.condition(tf.constant(raw)).numpy(), 0.3), task, raw


def test_the_tiles_sit_on_the_pooling_grid_and_overlap_by_the_receptive_field(biosr_case):
    model = biosr_case[0]
    radius = receptive_radius(model.denoiser, 3)
    assert radius == 27  # a U-Net of depth 2, 3 x 3 kernels: a change to the network changes the tests below
    assert TILE // 4 >= radius
    assert tile_starts(SHAPE[0], TILE, TILE // 4) == [0, 128] and tile_starts(SHAPE[1], TILE, TILE // 4) == [0, 80]
    assert all(start % model.model_config.size_multiple == 0 for start in (128, 80))


def test_tiled_biosr_reconstruction_is_the_untiled_one_away_from_the_seams(biosr_case):
    """BioSR (2x grid, condition = the whole widefield image normalised and upsampled, mean = condition, clip to
    [-1, 1], back to the input's units), DDIM, 4 tiles against one piece:
    - farther than the receptive field from every inner tile edge (66% of the pixels, the middle of every overlap
      among them) the means agree to 1e-5 of their range (measured 1.1e-6: float round-off), and so does the
      schedule map (tau U-Net, radius 11; measured 6e-6, bound 1e-4);
    - nearer, a tile's U-Net sees zero padding instead of its neighbour, and the raised-cosine ramp still gives it
      some weight: measured max 0.049 of the range, mean over all pixels 1.2e-3 (bounds 0.1 and 3e-3). Tiles
      blended with flat windows (hard seams) give 0.50 and 0.018.
    The samples of the point mass agree: std < 1e-5 of the range everywhere (measured 2.4e-4 / 143)."""
    model, task, raw = biosr_case
    whole = reconstruct(model, task, raw, tile=1024, **OPTIONS)
    tiled = reconstruct(model, task, raw, tile=TILE, batch_size=4, **OPTIONS)
    span = float(np.ptp(whole["mean"]))
    assert span > 50  # the U-Net's output varies (measured 143): a constant would agree trivially
    error = np.abs(tiled["mean"] - whole["mean"])[..., 0] / span
    far = far_from_tile_edges(SHAPE, TILE, receptive_radius(model.denoiser, 3))
    assert 0.6 < far.mean() < 0.7
    assert error[far].max() < 1e-5
    assert error.max() < 0.1 and error.mean() < 3e-3
    schedule_far = far_from_tile_edges(SHAPE, TILE, receptive_radius(model.schedule.tau_net, 1))
    schedule_error = np.abs(tiled["schedule"] - whole["schedule"])[..., 0] / np.ptp(whole["schedule"])
    assert schedule_error[schedule_far].max() < 1e-4
    assert max(whole["std"].max(), tiled["std"].max()) < 1e-5 * span


def test_tiled_qpi_phase_is_the_untiled_one_up_to_a_constant_after_aligning_the_tiles():
    """QPI (condition: the intensity pair and its FFT-TIE phase, mean = the TIE channel, residual scale 2), a model
    whose phase is zero-mean over each tile it sees: `reconstruct` shifts every tile by the least-squares offsets
    that make overlaps agree before blending, so the tiled phase must be the whole image's up to one constant. The
    phase (cells on a 3 rad bump across the field, TIE at a weight that keeps the bump) gives the four tiles TIE
    channels whose means differ by up to 1.24 rad.
    - Away from the seams: measured max deviation 5.7e-3 of the phase range (8 rad; bound 0.015). The offsets come
      from whole overlaps, seams included, which keeps them from exact; without them the tiles keep their own
      means: 0.089.
    - All pixels: measured max 0.027, mean 4.7e-3 of the range (bounds 0.06 and 0.012); without the offsets the
      mean is 0.041, with flat windows the max is 0.15."""
    from cvdm_tf.data.phantoms import cell_phantoms
    from cvdm_tf.tasks.qpi import DataConfig, QPITask

    task = QPITask(DataConfig(noise="none", tie_channel=True, tie_weight="fixed", tie_regularization=1e-10,
                              data_consistency=0))
    rows, cols = np.mgrid[0:SHAPE[0], 0:SHAPE[1]] / max(SHAPE)
    bump = 3.0 * np.exp(-((rows - 0.3) ** 2 + (cols - 0.6) ** 2) / (2 * 0.25**2))
    phase = cell_phantoms(1, max(SHAPE), seed=3, peak=3.0)[0][:SHAPE[0], :SHAPE[1]] + bump
    raw = task.measure(tf.constant(phase, tf.float32)).numpy()
    model = random_model(ModelConfig(condition_channels=3, residual_scale=2.0, x_range=4.0, **TINY_UNETS),
                         offset_free=True)
    model = output_scaled(model, task.condition(tf.constant(raw)).numpy(), 0.3)
    whole = reconstruct(model, task, raw, tile=1024, **OPTIONS)["mean"][..., 0]
    tiled = reconstruct(model, task, raw, tile=TILE, batch_size=4, **OPTIONS)["mean"][..., 0]
    far = far_from_tile_edges(SHAPE, TILE, receptive_radius(model.denoiser, 5))
    difference = tiled - whole
    difference -= difference[far].mean()
    error = np.abs(difference) / np.ptp(whole)
    assert error[far].max() < 0.015
    assert error.max() < 0.06 and error.mean() < 0.012
