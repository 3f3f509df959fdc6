"""The SR3 denoiser: per-pixel noise-level features, attention over the whole image, `.keras` round trip, and
the CVDM / regression models built on it."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from cvdm_tf.config import ModelConfig
from cvdm_tf.model import CVDM
from cvdm_tf.sr3 import LOG_SNR_MAX, NoiseLevelFeatures, SpatialSelfAttention, sr3_unet


def _randomise(model, seed=0):
    """Non-zero weights everywhere (the output layer starts at zero, which would hide every difference)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.2, weight.shape).astype(np.float32))


def test_noise_features_are_sinusoids_of_the_log_snr():
    gamma = np.array([0.5, 0.9, 1e-12, 1.0], np.float32).reshape(1, 2, 2, 1)
    features = NoiseLevelFeatures(frequencies=2)(gamma).numpy()
    assert features.shape == (1, 2, 2, 5)
    s = np.clip(np.log(gamma / np.maximum(1 - gamma, 1e-30)), -LOG_SNR_MAX, LOG_SNR_MAX) / LOG_SNR_MAX
    np.testing.assert_allclose(features[..., 0], s[..., 0], atol=1e-5)
    np.testing.assert_allclose(features[..., 2], np.sin(2 * np.pi * s[..., 0]), atol=1e-5)
    np.testing.assert_allclose(features[..., 4], np.cos(2 * np.pi * s[..., 0]), atol=1e-5)
    assert np.isfinite(features).all()  # gamma = 1 and gamma ~ 0 are clipped, not infinite


def test_attention_sees_the_whole_image():
    """Changing one corner changes the output at the opposite corner: one attention layer's receptive field is
    the whole map."""
    layer = SpatialSelfAttention(heads=1, key_dim=4, groups=2)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 4)).astype(np.float32)
    before = layer(x).numpy()
    x[0, 0, 0] += 3.0
    after = layer(x).numpy()
    assert np.abs(after[0, -1, -1] - before[0, -1, -1]).max() > 1e-4


def test_sr3_output_far_corner_depends_on_a_corner_beyond_the_convolutions_reach():
    """In a 64 px image, depth 1: the convolutions reach ~20 px; the attention at the 32 px level reaches all."""
    net = sr3_unet(5, 1, noise_channels=1, base_filters=8, depth=1)
    _randomise(net)
    x = np.random.default_rng(1).uniform(0.1, 0.9, (1, 64, 64, 5)).astype(np.float32)
    before = net(x).numpy()
    x[0, :2, :2, :4] += 1.0  # not the gamma channel
    after = net(x).numpy()
    assert np.abs(after[0, -4:, -4:] - before[0, -4:, -4:]).max() > 1e-5


def test_the_noise_level_reaches_the_output():
    net = sr3_unet(3, 1, noise_channels=1, base_filters=8, depth=2)
    _randomise(net)
    x = np.random.default_rng(2).normal(size=(1, 16, 16, 3)).astype(np.float32)
    x[..., -1] = 0.3
    low = net(x).numpy()
    x[..., -1] = 0.7
    assert np.abs(net(x).numpy() - low).max() > 1e-4


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    net = sr3_unet(9, 3, noise_channels=3, base_filters=8, depth=2)
    _randomise(net)
    x = np.random.default_rng(3).uniform(0.01, 0.99, (2, 16, 24, 9)).astype(np.float32)
    path = tmp_path / "sr3.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), net(x).numpy())


@pytest.mark.parametrize("kind", ["cvdm", "regression"])
def test_models_build_on_sr3(kind):
    from cvdm_tf.config import Config
    from cvdm_tf.model import build_model

    config = Config().replace(model=dict(denoiser="sr3", kind=kind, base_filters=8, depth=2, tau_depth=1,
                                         tau_base_filters=4, time_units=4))
    model = build_model(config)
    y = tf.random.uniform((2, 16, 16, 2))
    if kind == "regression":
        assert model(y).shape == (2, 16, 16, 1)
        assert model.net.get_layer("regression_net_attention") is not None
    else:
        assert isinstance(model, CVDM) and model.denoiser.get_layer("denoiser_noise_features") is not None
        out = model((tf.zeros((2, 16, 16, 1)), y, tf.fill((2, 16, 16, 1), 0.5)))
        assert out.shape == (2, 16, 16, 1)


def test_the_unet_stays_the_default():
    assert ModelConfig().denoiser == "unet"
