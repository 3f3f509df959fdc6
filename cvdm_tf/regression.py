"""The regression baseline (CARE / DFCAN-like): the denoiser's U-Net backbone trained with L1 to map the
condition straight to the target, on the same data and budget as the CVDM (`model.kind = "regression"`).

It goes through the same run folder, `infer`, `eval` and `export` as the CVDM: `Predictor` has the sampler's
contract and returns its one answer as the `mean`, with a zero `std` and `schedule` (a regression has no
spread to report).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from cvdm_tf.config import LossConfig, ModelConfig
from cvdm_tf.model import dtype_policy, sum_over_replicas, unpack
from cvdm_tf.networks import backbone, crop_to, pad_to_multiple


@keras.saving.register_keras_serializable(package="cvdm_tf")
class Regression(keras.Model):
    """x_hat = mean(y) + unet(y) / residual_scale, trained with L1 (mean(y): the condition's estimate with
    `model.mean = "condition"`, else 0).

    Args:
        model_config: ModelConfig or dict. The backbone's widths and depth (the denoiser's), and `mean`.
        seed: int. Unused by the loss; kept so a run folder checkpoints it like a CVDM's random stream.
    """

    is_regression = True

    def __init__(self, model_config=None, loss_config=None, seed: int = 0, precision: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if isinstance(model_config, dict) or model_config is None:
            model_config = ModelConfig(**(model_config or {}))
        self.model_config = model_config
        self.loss_config = loss_config if isinstance(loss_config, LossConfig) else LossConfig(**(loss_config or {}))
        self.seed = seed
        self.precision = precision
        c = model_config
        with dtype_policy(precision):
            self.net = backbone(c, c.condition_channels, c.target_channels, name="regression_net")
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.trackers = {"loss": keras.metrics.Mean(name="loss")}
        self.built = True

    def call(self, y):
        y = tf.convert_to_tensor(y)
        out = tf.cast(self.net(y), tf.float32) / self.model_config.residual_scale
        if self.model_config.mean == "condition":
            out = out + y[..., -self.model_config.target_channels:]
        return out

    def train_step(self, data):
        return self.record(*self.replica_train_step(data))

    def test_step(self, data):
        return self.record(*self.replica_test_step(data))

    def replica_train_step(self, data):
        """One update from this replica's share of a global batch (as `CVDM.replica_train_step`): (loss, {})."""
        y, x, _ = unpack(data)
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(self(y) - x))
            scaled = self.optimizer.scale_loss(loss / context.num_replicas_in_sync)
        variables = self.trainable_variables
        self.optimizer.apply(sum_over_replicas(tape.gradient(scaled, variables)), variables)
        return loss, {}

    def replica_test_step(self, data):
        y, x, _ = unpack(data)
        return tf.reduce_mean(tf.abs(self(y) - x)), {}

    def record(self, loss, terms):
        self.trackers["loss"].update_state(loss)
        return {"loss": self.trackers["loss"].result()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {"name": self.name, "model_config": dataclasses.asdict(self.model_config),
                "loss_config": dataclasses.asdict(self.loss_config), "seed": self.seed, "precision": self.precision}

    def build(self, input_shape=None):
        self.built = True


class Predictor(tf.Module):
    """The sampler's contract for a `Regression`: `sample(y, steps, samples, seed, deterministic)` and
    `__call__(y, steps, samples, seed, method)` give mean = the prediction, std = schedule = 0."""

    antithetic = False  # one answer: nothing to pair (the `Sampler` attributes callers read)
    std_ddof = 1

    def __init__(self, model, name: str = "predictor"):
        super().__init__(name=name)
        self.model = model
        self.size_multiple = model.model_config.size_multiple
        self.sample = tf.function(self._sample, input_signature=[
            tf.TensorSpec([None, None, None, model.model_config.condition_channels], tf.float32, name="condition"),
            tf.TensorSpec([], tf.int32, name="steps"), tf.TensorSpec([], tf.int32, name="samples"),
            tf.TensorSpec([], tf.int32, name="seed"), tf.TensorSpec([], tf.bool, name="deterministic")])

    def __call__(self, y, steps=1, samples=1, seed=0, method="ddpm"):
        return self.sample(tf.convert_to_tensor(y, tf.float32), tf.constant(steps, tf.int32),
                           tf.constant(samples, tf.int32), tf.constant(seed, tf.int32), tf.constant(True))

    def _sample(self, y, steps, samples, seed, deterministic):
        padded, size = pad_to_multiple(y, self.size_multiple)
        prediction = crop_to(self.model(padded), size)
        bound = self.model.model_config.target_range
        if bound > 0:
            prediction = tf.clip_by_value(prediction, -bound, bound)
        zeros = tf.zeros_like(prediction)
        return {"mean": prediction, "std": zeros, "schedule": zeros,
                "samples": tf.repeat(prediction[:, None], samples, axis=1)}
