"""The noise schedule: one contract, four kinds (cvdm-math.md section 2).

Notation (all schedule tensors have the target's shape [B, H, W, C], one schedule per pixel and channel):

    paper            code                     meaning
    t in [0, 1]      t  [B, 1]                diffusion time, one per example
    tau(y) > 0       tau(y)                   positive map of the condition (softplus U-Net)
    rho(t)           rho(t)   [B, 1]          increasing, rho(0) = 0
    lambda(t) > 0    lam(t)   [B, 1]          time part of the noise rate
    gamma(t, y)      gamma(t, tau)            exp(-tau * rho(t)): signal variance, 1 at t = 0, ~0 at t = 1
    beta(t, y)       beta(t, tau)             tau * lambda(t): noise rate, d gamma/dt = -beta * gamma (eq. 4)
    tau * rho(1)     magnitude(tau)           the "schedule magnitude" image (section 5)

Kinds (`make_schedule`):
    learned          CVDM: tau(y) is a U-Net of the condition (pixel-wise schedule), rho and lambda monotone nets.
    learned-global   CVDM-simple: tau is one learned positive number per channel.
    linear, cosine   CDDPM baseline: fixed, tau = 1, rho and lambda in closed form.

Every kind exposes the same contract: `tau(y)`, `rho(t)`, `lam(t)`, and from them `gamma`, `log_gamma`, `beta`.
The loss and the sampler only use this contract. Because tau(y) does not depend on t (separation of variables),
callers compute it once per condition and pass it to the time functions; `gamma(t, y)` is the convenience form.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

from cvdm_tf.networks import unet


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0."""
    return math.log(math.expm1(y))


@keras.saving.register_keras_serializable(package="cvdm_tf")
class NonNegDense(layers.Dense):
    """A Dense layer whose effective kernel is |W|: non-negative by reparametrisation, not by a constraint.

    A constraint (`keras.constraints.NonNeg`) projects the weights after each update, but Keras 3 updates the EMA
    before it applies constraints, so the averaged weights the sampler uses can leave the non-negative set (a
    weight held at 0 by the constraint had EMA -3e-4). With |W| every weight vector, averaged or not, gives a
    non-negative kernel. Weights saved with the constraint (all >= 0) load unchanged.
    """

    def call(self, inputs):
        outputs = keras.ops.matmul(inputs, keras.ops.abs(self.kernel))
        return outputs + self.bias if self.use_bias else outputs


@keras.saving.register_keras_serializable(package="cvdm_tf")
class MonotoneNet(layers.Layer):
    """f: [B, 1] -> [B, 1], positive and non-decreasing in t by construction.

    linear -> sigmoid -> linear, with a skip connection from the first linear layer to the output, then softplus.
    All kernels are non-negative (`NonNegDense`: |W|, so the EMA weights are too), and every activation is
    monotone, so the composition is non-decreasing: no penalty is needed for monotonicity.

    Args:
        units: int. Width of the hidden layer.
        output_bias: float. Initial bias of the output (sets the starting scale of the schedule).
    """

    def __init__(self, units: int = 16, output_bias: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.output_bias = output_bias
        non_negative = dict(kernel_initializer=keras.initializers.RandomUniform(0.0, 0.1))
        dtype = self.dtype_policy
        self.hidden = NonNegDense(units, name="hidden", dtype=dtype, **non_negative)
        self.out = NonNegDense(
            1, name="out", bias_initializer=keras.initializers.Constant(output_bias), dtype=dtype, **non_negative
        )
        self.skip = NonNegDense(1, use_bias=False, name="skip", dtype=dtype, **non_negative)

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.out.build((None, self.units))
        self.skip.build((None, self.units))

    def call(self, t):
        h = self.hidden(t)
        return tf.nn.softplus(self.out(tf.sigmoid(h)) + self.skip(h))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "output_bias": self.output_bias}


class Schedule(layers.Layer):
    """The schedule contract. Subclasses define tau(y), rho(t) and lam(t); the rest follows."""

    def __init__(self, target_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.target_channels = target_channels

    # --- what a kind defines ---
    def tau(self, y):
        """tau(y) > 0, target-shaped [B, H, W, C_out]."""
        raise NotImplementedError

    def rho(self, t):
        """rho(t), [B, 1], increasing, rho(0) = 0."""
        raise NotImplementedError

    def lam(self, t):
        """lambda(t) > 0, [B, 1]."""
        raise NotImplementedError

    # --- what follows from it ---
    def log_gamma(self, t, tau):
        return -tau * tf.reshape(self.rho(tf.reshape(t, [-1, 1])), [-1, 1, 1, 1])

    def gamma(self, t, tau):
        """gamma = exp(-tau * rho(t)); `tau` is tau(y), computed once per condition."""
        return tf.exp(self.log_gamma(t, tau))

    def beta(self, t, tau):
        """beta = tau * lambda(t)."""
        return tau * tf.reshape(self.lam(tf.reshape(t, [-1, 1])), [-1, 1, 1, 1])

    def magnitude(self, tau):
        """tau * rho(1): the integral of beta over t, the schedule magnitude image (cvdm-math.md section 5)."""
        ones = tf.ones([tf.shape(tau)[0], 1], tau.dtype)
        return tau * tf.reshape(self.rho(ones), [-1, 1, 1, 1])

    def gamma_of(self, t, y):
        """gamma(t, y), the contract in the paper's form."""
        return self.gamma(t, self.tau(y))

    def beta_of(self, t, y):
        """beta(t, y), the contract in the paper's form."""
        return self.beta(t, self.tau(y))

    def call(self, inputs):
        t, y = inputs
        tau = self.tau(y)
        return self.gamma(t, tau), self.beta(t, tau)

    def get_config(self):
        return {**super().get_config(), "target_channels": self.target_channels}


class _LearnedTime(Schedule):
    """Shared by the learned kinds: rho(t) = t * f_rho(t) and lambda(t) = f_lambda(t), both monotone networks.

    t * f(t) with f positive and non-decreasing is increasing for t >= 0 and exactly 0 at t = 0. Both networks
    start at the same constant scale, so rho' ~= lambda at initialisation (eq. 4 nearly holds from step 0),
    with tau * rho(1) = `initial_magnitude`: gamma(1) = exp(-magnitude) starts near 0.

    Gauge: (tau, rho, lambda) -> (c tau, rho / c, lambda / c) changes no loss term, so only tau * rho(1) means
    anything. "free" (the paper's) leaves c to the optimiser, and tau starts at 1 with rho(1) = initial_magnitude.
    "unit" fixes it: rho(t) = t f(t) / f(1), so rho(1) = 1 and tau(y) is the magnitude; tau starts at
    initial_magnitude and lambda at 1.
    """

    def __init__(self, time_units: int = 16, initial_magnitude: float = 10.0, gauge: str = "free", **kwargs):
        super().__init__(**kwargs)
        self.time_units = time_units
        self.initial_magnitude = initial_magnitude
        self.gauge = gauge
        # Output biases chosen so softplus(bias) ~ the starting rho'(t) while the hidden weights are small.
        bias = inverse_softplus(1.0 if gauge == "unit" else initial_magnitude)
        self.rho_net = MonotoneNet(time_units, output_bias=bias, name="rho_net", dtype=self.dtype_policy)
        self.lambda_net = MonotoneNet(time_units, output_bias=bias, name="lambda_net", dtype=self.dtype_policy)
        self.rho_net.build((None, 1))
        self.lambda_net.build((None, 1))

    @property
    def tau_start(self) -> float:
        """The constant tau(y) the schedule starts from."""
        return self.initial_magnitude if self.gauge == "unit" else 1.0

    def rho(self, t):
        t = tf.reshape(tf.cast(t, self.compute_dtype), [-1, 1])
        if self.gauge == "unit":
            return t * self.rho_net(t) / self.rho_net(tf.ones([1, 1], t.dtype))
        return t * self.rho_net(t)

    def lam(self, t):
        t = tf.reshape(tf.cast(t, self.compute_dtype), [-1, 1])
        return self.lambda_net(t)

    def get_config(self):
        return {**super().get_config(), "time_units": self.time_units, "initial_magnitude": self.initial_magnitude,
                "gauge": self.gauge}


@keras.saving.register_keras_serializable(package="cvdm_tf")
class PixelwiseSchedule(_LearnedTime):
    """CVDM: tau(y) is a softplus U-Net on the condition, so every pixel gets its own schedule."""

    def __init__(self, condition_channels: int = 2, base_filters: int = 8, depth: int = 2, kernel_size: int = 3,
                 norm: str = "group", **kwargs):
        super().__init__(**kwargs)
        self.condition_channels = condition_channels
        self.base_filters = base_filters
        self.depth = depth
        self.kernel_size = kernel_size
        self.norm = norm
        # The output starts at the constant tau_start (zero kernel, bias softplus^-1(tau_start)).
        self.tau_net = unet(
            condition_channels, self.target_channels, base_filters, depth, kernel_size, norm=norm,
            output_activation="softplus", output_bias=inverse_softplus(self.tau_start), name="tau_net",
        )

    def tau(self, y):
        return self.tau_net(y)

    def get_config(self):
        return {**super().get_config(), "condition_channels": self.condition_channels,
                "base_filters": self.base_filters, "depth": self.depth, "kernel_size": self.kernel_size,
                "norm": self.norm}


@keras.saving.register_keras_serializable(package="cvdm_tf")
class GlobalSchedule(_LearnedTime):
    """CVDM-simple: one learned positive tau per target channel, the same for every pixel and condition."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tau_raw = self.add_weight(
            name="tau_raw", shape=(self.target_channels,),
            initializer=keras.initializers.Constant(inverse_softplus(self.tau_start)),
        )

    def tau(self, y):
        shape = tf.concat([tf.shape(y)[:3], [self.target_channels]], axis=0)
        return tf.nn.softplus(self.tau_raw) * tf.ones(shape, self.compute_dtype)


@keras.saving.register_keras_serializable(package="cvdm_tf")
class LinearSchedule(Schedule):
    """CDDPM's linear schedule in continuous time (the VP-SDE form of DDPM's beta_1 .. beta_T):

        lambda(t) = beta_min + t (beta_max - beta_min),   rho(t) = beta_min t + (beta_max - beta_min) t^2 / 2,

    so gamma(t) = exp(-rho(t)) and d gamma/dt = -lambda gamma exactly. tau = 1 everywhere.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.beta_min = beta_min
        self.beta_max = beta_max

    def tau(self, y):
        shape = tf.concat([tf.shape(y)[:3], [self.target_channels]], axis=0)
        return tf.ones(shape, self.compute_dtype)

    def rho(self, t):
        t = tf.reshape(tf.cast(t, self.compute_dtype), [-1, 1])
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def lam(self, t):
        t = tf.reshape(tf.cast(t, self.compute_dtype), [-1, 1])
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def get_config(self):
        return {**super().get_config(), "beta_min": self.beta_min, "beta_max": self.beta_max}


@keras.saving.register_keras_serializable(package="cvdm_tf")
class CosineSchedule(Schedule):
    """The cosine schedule of Nichol & Dhariwal (2021): gamma(t) = cos^2(phi(t)) / cos^2(phi(0)),
    phi(t) = (t + s) / (1 + s) * pi / 2, so rho = -log gamma and lambda = -d log gamma/dt = pi/(1+s) tan(phi(t)).

    gamma(1) = 0 exactly, where rho and lambda are infinite: t is clipped at `t_max` (gamma(t_max) ~ 2.4e-8);
    the sampler's alpha clip (eq. 10) handles the steep end as it does for learned schedules.
    """

    def __init__(self, offset: float = 0.008, t_max: float = 1.0 - 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset
        self.t_max = t_max

    def _phi(self, t):
        t = tf.minimum(tf.reshape(tf.cast(t, self.compute_dtype), [-1, 1]), self.t_max)
        return (t + self.offset) / (1.0 + self.offset) * (math.pi / 2)

    def tau(self, y):
        shape = tf.concat([tf.shape(y)[:3], [self.target_channels]], axis=0)
        return tf.ones(shape, self.compute_dtype)

    def rho(self, t):
        phi0 = self.offset / (1.0 + self.offset) * (math.pi / 2)
        return 2.0 * (math.log(math.cos(phi0)) - tf.math.log(tf.cos(self._phi(t))))

    def lam(self, t):
        return math.pi / (1.0 + self.offset) * tf.tan(self._phi(t))

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "t_max": self.t_max}


def make_schedule(model_config, **layer_kwargs) -> Schedule:
    """The schedule of a `ModelConfig` (`schedule` = learned | learned-global | linear | cosine).

    `layer_kwargs` go to the layer (e.g. `dtype="float64"` for exact derivative tests of the time networks).
    """
    c = model_config
    kind = c.schedule
    layer_kwargs.setdefault("name", "schedule")
    if kind == "learned":
        return PixelwiseSchedule(
            condition_channels=c.condition_channels, base_filters=c.tau_base_filters, depth=c.tau_depth,
            kernel_size=c.kernel_size, norm=c.norm, time_units=c.time_units, target_channels=c.target_channels,
            gauge=c.gauge, **layer_kwargs,
        )
    if kind == "learned-global":
        return GlobalSchedule(time_units=c.time_units, target_channels=c.target_channels, gauge=c.gauge,
                              **layer_kwargs)
    if kind == "linear":
        return LinearSchedule(c.beta_min, c.beta_max, target_channels=c.target_channels, **layer_kwargs)
    if kind == "cosine":
        return CosineSchedule(c.cosine_offset, target_channels=c.target_channels, **layer_kwargs)
    raise ValueError(f"unknown schedule {kind!r}")
