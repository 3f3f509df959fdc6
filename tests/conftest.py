"""Test-wide set-up: quiet TensorFlow, seed everything, keep tests on the CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


TINY_QPI = {
    # Around the TIE channel alone (no mean network: a third fewer weights to train; builtin:qpi has one).
    "model": dict(base_filters=4, depth=2, tau_base_filters=4, tau_depth=1, time_units=4, mean="condition"),
    # No mean network, so nothing to clip apart (and float16's loss scaling refuses per-network clipping).
    "train": dict(steps=6, batch_size=2, log_every=2, checkpoint_every=3, preview_every=3,
                  gradient_clip_per_network=False),
    "sampler": dict(steps=5, samples=2),
    "data": dict(image_size=16),
}


def tiny_qpi_config(**sections):
    """A QPI config small enough to train in seconds (sections override TINY_QPI)."""
    from cvdm_tf.config import default_config

    merged = {name: {**TINY_QPI.get(name, {}), **sections.get(name, {})} for name in {*TINY_QPI, *sections}}
    return default_config("qpi").replace(**merged)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder trained for 6 steps on 16 px crops: what infer/export/eval tests use as --model."""
    from cvdm_tf.training import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_qpi_config(), out)
    return out
