"""CVDM(keras.Model): wires the schedule, the denoiser (and the optional mean network) to the regularised loss.

The model owns no diffusion math of its own: the loss terms come from `losses`, the schedule from `schedules`,
sampling from `sampler`. `train_step` / `test_step` follow the Keras 3 contract (TensorFlow backend), so
`model.fit(dataset)` trains it and logs every loss term as a metric. Data are `(y, x)` pairs: condition, target.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import tensorflow as tf

from cvdm_tf import losses
from cvdm_tf.config import LossConfig, ModelConfig
from cvdm_tf.networks import backbone
from cvdm_tf.schedules import make_schedule

LOSS_TERMS = ("diffusion", "consistency", "prior", "smoothness")


@keras.saving.register_keras_serializable(package="cvdm_tf")
class CVDM(keras.Model):
    """Conditional Variational Diffusion Model (Della Maggiora et al., ICLR 2024).

    Args:
        model_config: ModelConfig or dict. Networks and schedule kind.
        loss_config: LossConfig or dict. Weights w and alpha of the regularised loss.
        boundary_steps: int. T used for the boundary conditions of L_beta, evaluated at t = 1/T and 1 - 1/T as
            in the reference (the sampler's grid starts at 1/T).
        seed: int. Seed of the model's random stream (t and eps of the training step); its state is a variable,
            so a restored checkpoint continues the same stream.

    Example:
        model = CVDM(ModelConfig(condition_channels=2, target_channels=1))
        model.compile(optimizer=keras.optimizers.Adam(1e-4, use_ema=True))
        model.fit(dataset_of_y_x_pairs, steps_per_epoch=100)

    References:
        Della Maggiora, Croquevielle, Deshpande, Horsley, Heinis, Yakimovich. Conditional Variational Diffusion
        Models. ICLR 2024.
    """

    def __init__(self, model_config=None, loss_config=None, boundary_steps: int = 200, seed: int = 0,
                 precision: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if isinstance(model_config, dict) or model_config is None:
            model_config = ModelConfig(**(model_config or {}))
        if isinstance(loss_config, dict) or loss_config is None:
            loss_config = LossConfig(**(loss_config or {}))
        self.model_config = model_config
        self.loss_config = loss_config
        self.boundary_steps = boundary_steps
        self.seed = seed
        self.clip_per_network = 0.0  # > 0: the train step clips the mean network and the rest apart (build_model)
        self.precision = precision
        c = model_config

        # === Layers ===
        self.schedule = make_schedule(c)  # always float32: gamma, its time derivatives and the loss need it
        with dtype_policy(precision):
            self.denoiser = backbone(c, 2 * c.target_channels + c.condition_channels, c.target_channels,
                                     noise_channels=c.target_channels, name="denoiser")
            self.mean_net = None
            if c.mean in ("network", "condition+network"):
                self.mean_net = backbone(c, c.condition_channels, c.target_channels, name="mean_net")
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")

        # === Metrics ===
        names = ("loss",) + LOSS_TERMS + (("mean",) if self.mean_net is not None else ())
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        # Every part is built above (functional U-Nets, time networks), so weights exist before any call or load.
        self.built = True

    # --- the denoiser contract ---
    def call(self, inputs):
        """eps_hat(z_t, y, gamma): the noise prediction, from `(z_t, y, gamma)`."""
        z_t, y, gamma = inputs
        return tf.cast(self.denoiser(tf.concat([z_t, y, gamma], axis=-1)), tf.float32)

    def prior_mean(self, y):
        """The mean the diffusion works around: E[x|y] from the mean network, the last condition channel (the
        condition's estimate), the two added ("condition+network"), or None."""
        c = self.model_config
        y = tf.convert_to_tensor(y)
        estimate = y[..., -c.target_channels:] if c.mean.startswith("condition") else None
        if self.mean_net is None:
            return estimate
        correction = tf.cast(self.mean_net(y), tf.float32)
        return correction if estimate is None else estimate + correction

    def residual_target(self, x, y):
        """What the diffusion models: (x - mean) * residual_scale around `prior_mean`, or x itself."""
        mean = self.prior_mean(y)
        if mean is None:
            return x, None
        # A mean network learns from its own loss only; the diffusion sees it as a fixed offset.
        residual = (x - tf.stop_gradient(mean)) * self.model_config.residual_scale
        return residual, mean

    # --- the loss ---
    def loss_terms(self, y, x, seeds=None):
        """The named terms of cvdm-math.md section 3 for a batch (y, x); `seeds` as in `draw_noise`."""
        x0, mean = self.residual_target(x, y)
        # 1. Draw one t per example and the noise.
        t, eps = self.draw_noise(x0, seeds)
        # 2. The schedule at t, with its time derivatives by autodiff.
        tau = self.schedule.tau(y)
        gamma, dgamma, d2gamma, dlog_gamma = losses.time_derivatives(self.schedule, t, tau, with_log_rate=True)
        beta = self.schedule.beta(t, tau)
        # 3. Diffuse and predict the noise; gradients reach the schedule through z_t and the gamma input.
        # Both square roots from log gamma: where gamma rounds to 1 (t ~ 0) or underflows to 0 (tau * rho > 87),
        # the derivative of sqrt would be infinite and turn the whole update into NaN with a finite loss.
        log_gamma = self.schedule.log_gamma(t, tau)
        one_minus_gamma = tf.maximum(-tf.math.expm1(log_gamma), 1e-12)
        z_t = tf.exp(0.5 * log_gamma) * x0 + tf.sqrt(one_minus_gamma) * eps
        eps_hat = self((z_t, y, gamma))
        # 4. Boundary values and the end of the forward process.
        ones = tf.ones_like(t)
        step = 1.0 / self.boundary_steps
        gamma_start = self.schedule.gamma(ones * step, tau)
        gamma_end = self.schedule.gamma(ones * (1.0 - step), tau)
        log_gamma_1 = self.schedule.log_gamma(ones, tau)
        terms = {
            "diffusion": losses.diffusion_loss(eps, eps_hat),
            "consistency": (losses.consistency_loss(dgamma, beta, gamma, gamma_start, gamma_end)
                            if self.loss_config.consistency == "paper"
                            else losses.relative_consistency_loss(dlog_gamma, beta, gamma_start, gamma_end)),
            "prior": losses.prior_loss(x0, log_gamma_1),
            "smoothness": losses.smoothness_loss(d2gamma),
        }
        if self.mean_net is not None:
            error = x - mean
            terms["mean"] = tf.reduce_mean(tf.abs(error) if self.model_config.mean_loss == "l1" else tf.square(error))
        return terms

    def draw_noise(self, x0, seeds=None):
        """t ~ U[0, 1) [B, 1] and eps ~ N(0, I) like x0, one draw per example (with `loss.t_sampling =
        "stratified"`, t_b = t_0 + b / B mod 1: each t still uniform, the batch spread evenly over [0, 1)).

        With `seeds` [B, 2] (each example's key, from the data pipeline) the draws are stateless functions of
        the keys: an example gets the same t and eps on whichever replica of a distributed run it lands, and a
        resumed run redraws them exactly. Without, from the model's random stream (`seed_generator`).
        """
        if seeds is None:
            t = keras.random.uniform((tf.shape(x0)[0], 1), seed=self.seed_generator)
            eps = keras.random.normal(tf.shape(x0), seed=self.seed_generator)
        else:
            shape = tf.shape(x0)[1:]
            fold_in = tf.random.experimental.stateless_fold_in

            def one(seed):
                return (tf.random.stateless_uniform([1], seed=fold_in(seed, 0)),
                        tf.random.stateless_normal(shape, seed=fold_in(seed, 1)))

            t, eps = tf.map_fn(one, seeds, fn_output_signature=(tf.float32, tf.float32))
        if self.loss_config.t_sampling == "stratified":
            # VDM's low-discrepancy draw: one uniform offset (the first example's draw) and the batch's B strata.
            batch = tf.shape(t)[0]
            strata = tf.cast(tf.range(batch), tf.float32)[:, None] / tf.cast(batch, tf.float32)
            t = tf.math.floormod(t[:1] + strata, 1.0)
        return t, eps

    def train_step(self, data):
        return self.record(*self.replica_train_step(data))

    def test_step(self, data):
        return self.record(*self.replica_test_step(data))

    def replica_train_step(self, data):
        """One update from this replica's share of a global batch; returns its (loss, terms), means over its
        examples. `data`: (y, x), or (y, x, seeds) with each example's key [B, 2] (not sample weights).

        With R replicas of equal batches the global loss is the mean of theirs: each differentiates loss / R and
        the gradients are summed over the replicas here, so that the optimizer's global-norm clipping sees the
        global gradient (`make_optimizer`'s Adam does not sum them again).
        """
        y, x, seeds = unpack(data)
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            terms = self.loss_terms(y, x, seeds)
            loss = losses.total_loss(terms, self.loss_config.w, self.loss_config.alpha)
            scaled = self.optimizer.scale_loss(loss / context.num_replicas_in_sync)  # float16: loss scaling
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        gradients = sum_over_replicas(gradients)
        if self.clip_per_network and self.mean_net is not None:
            gradients = self.clip_per_network_norm(gradients, variables)
        self.optimizer.apply(gradients, variables)
        return loss, terms

    def clip_per_network_norm(self, gradients, variables):
        """The mean network's gradients and the rest's, each clipped to `clip_per_network` on its own global
        norm (`train.gradient_clip_per_network`; the optimizer then clips nothing)."""
        mean_ids = {id(v) for v in self.mean_net.trainable_variables}
        groups = ([i for i, v in enumerate(variables) if id(v) in mean_ids],
                  [i for i, v in enumerate(variables) if id(v) not in mean_ids])
        clipped = list(gradients)
        for group in groups:
            values, _ = tf.clip_by_global_norm([gradients[i] for i in group], self.clip_per_network)
            for i, value in zip(group, values):
                clipped[i] = value
        return clipped

    def replica_test_step(self, data):
        """(loss, terms) of this replica's share of a batch, without an update."""
        y, x, seeds = unpack(data)
        terms = self.loss_terms(y, x, seeds)
        return losses.total_loss(terms, self.loss_config.w, self.loss_config.alpha), terms

    def record(self, loss, terms):
        """Add a step's (global) loss and terms to the running means; the means so far, by name."""
        self.trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    # === Config ===
    def get_config(self):
        return {
            "name": self.name,
            "model_config": dataclasses.asdict(self.model_config),
            "loss_config": dataclasses.asdict(self.loss_config),
            "boundary_steps": self.boundary_steps,
            "seed": self.seed,
            "precision": self.precision,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def build(self, input_shape=None):
        self.built = True


def build_model(config) -> keras.Model:
    """The model of a full `Config`: a CVDM (boundary steps = the sampler's T), or with `model.kind =
    "regression"` the regression baseline on the same backbone."""
    if config.model.kind == "regression":
        from cvdm_tf.regression import Regression

        return Regression(config.model, config.loss, seed=config.train.seed, precision=config.train.precision,
                          name="regression")
    model = CVDM(config.model, config.loss, boundary_steps=config.sampler.steps, seed=config.train.seed,
                 precision=config.train.precision, name="cvdm")
    if config.train.gradient_clip_per_network and config.model.mean.endswith("network"):
        model.clip_per_network = config.train.gradient_clip  # the model clips; `make_optimizer` then does not
    return model


def make_optimizer(train_config, model=None) -> keras.optimizers.Optimizer:
    """Adam with global-norm gradient clipping and an exponential moving average of the weights, kept for
    sampling (`ema_weights`); under `train.precision = "mixed_float16"` wrapped in a dynamic loss scale.
    The models' train steps sum the gradients over replicas themselves (`sum_over_replicas`). A `model` that
    clips its networks apart (`CVDM.clip_per_network`) gets no global clipping here."""
    optimizer = SummedGradientsAdam(
        learning_rate=train_config.learning_rate,
        # Clipping the global gradient norm keeps one bad batch from throwing the learned schedule off
        # (measured: at learning rate 1e-3 without it, the default QPI run diverged at step ~1500).
        global_clipnorm=None if getattr(model, "clip_per_network", 0) else train_config.gradient_clip or None,
        use_ema=train_config.ema_momentum > 0,
        ema_momentum=train_config.ema_momentum or 0.99,
    )
    if train_config.precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@keras.saving.register_keras_serializable(package="cvdm_tf")
class SummedGradientsAdam(keras.optimizers.Adam):
    """Adam for gradients that arrive already summed over the replicas of a tf.distribute strategy.

    Keras sums them inside `apply`, after `global_clipnorm` has clipped each replica's own gradient: with
    several replicas that clips something else than a one-replica run clips. The train steps sum first
    (`sum_over_replicas`), so this does not sum again (same variables, so checkpoints of plain Adam load).
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def sum_over_replicas(gradients):
    """The gradients summed over the replicas of the current tf.distribute strategy (as they are with one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return gradients
    return context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)


def unpack(data):
    """(y, x, seeds) of a batch (y, x) or (y, x, seeds); seeds None when absent."""
    return (*data, None) if len(data) == 2 else tuple(data)


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Layers built inside compute in `precision` ("float32", "mixed_float16", "mixed_bfloat16"; variables stay
    float32): the U-Nets, not the schedule, whose gamma and derivatives the loss needs in float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def computing_in(network: keras.Model, precision: str):
    """Run an existing network's layers in `precision` (a Keras dtype policy, e.g. "mixed_bfloat16") while inside:
    the same float32 variables, cast on use. Sampling traces its graph inside this, so the graph computes the
    convolutions in bfloat16 without a second copy of the weights (and later weight changes, e.g. the EMA swap,
    reach it). The layers' own policies are restored on exit."""
    layers_ = list(network._flatten_layers(include_self=True, recursive=True))
    saved = [layer.dtype_policy for layer in layers_]
    try:
        for layer in layers_:
            layer.dtype_policy = precision
        yield network
    finally:
        for layer, policy in zip(layers_, saved):
            layer.dtype_policy = policy


@contextlib.contextmanager
def ema_weights(model: keras.Model):
    """Temporarily swap the optimizer's moving averages into the model's trainable weights (for sampling)."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's Adam holds them
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages or not optimizer.built:
        yield model
        return
    variables = model.trainable_variables
    saved = [v.numpy() for v in variables]
    try:
        for variable in variables:
            variable.assign(averages[optimizer._get_variable_index(variable)])
        yield model
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
