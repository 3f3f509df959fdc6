"""Sampling (cvdm-math.md section 4): the learned beta discretised on t_i = i / T, ancestral or DDIM updates,
K samples per condition in one batch, the whole loop one compiled TensorFlow graph.

    paper               code           meaning
    T                   steps          number of sampling steps
    alpha_i             alpha          clip(1 - beta(t_i, y) / T, 1e-6, 0.99999)       (eq. 10)
    gbar_i              gbar           prod_{j <= i} alpha_j   (kept as its logarithm, log_gbar)
    eps_hat             eps_hat        denoiser(z_i, y, gbar_i)
    x_hat               x_hat          (z_i - sqrt(1 - gbar_i) eps_hat) / sqrt(gbar_i)
    sigma_i^2           sigma2         (1 - gbar_{i-1}) / (1 - gbar_i) * (1 - alpha_i);  0 for DDIM
    K                   samples        samples per condition (std: the sample standard deviation over them)

tau(y) does not depend on t, so it is computed once per condition; each step runs only the tiny time network and
the denoiser. The loop is a `tf.while_loop` inside one `tf.function`: no Python loop over steps and no
`predict` call per step. Randomness is stateless (`tf.random.stateless_normal` seeded by (seed, step)), so the
same seed gives the same samples, also after export.
"""

from __future__ import annotations

import tensorflow as tf

from cvdm_tf.networks import crop_to, pad_to_multiple

ALPHA_MIN, ALPHA_MAX = 1e-6, 0.99999
LOG_GBAR_MIN = -60.0  # gbar >= 8.8e-27: sqrt(gbar) stays a normal float32


class Sampler(tf.Module):
    """The sampler of a CVDM, as a `tf.Module` so that it exports as a SavedModel unchanged.

    Args:
        model: CVDM. Its schedule, denoiser and (zero-mean) mean network are used, never changed.
        clip: float or None. x_hat is clipped to [-clip, clip] in the diffusion's space; None takes the model's
            `x_range` (the range its targets were scaled to); 0 disables clipping.
    """

    def __init__(self, model, clip: float | None = None, name: str = "sampler"):
        super().__init__(name=name)
        self.model = model
        self.clip = float(model.model_config.x_range if clip is None else clip)
        self.size_multiple = model.model_config.size_multiple
        channels = model.model_config.condition_channels
        self.sample = tf.function(
            self._sample,
            input_signature=[
                tf.TensorSpec([None, None, None, channels], tf.float32, name="condition"),
                tf.TensorSpec([], tf.int32, name="steps"),
                tf.TensorSpec([], tf.int32, name="samples"),
                tf.TensorSpec([], tf.int32, name="seed"),
                tf.TensorSpec([], tf.bool, name="deterministic"),
            ],
            reduce_retracing=True,
        )

    def __call__(self, y, steps=200, samples=1, seed=0, method="ddpm"):
        """Sample. Returns a dict with `mean`, `std` (over the K samples), `schedule` (tau * rho(1)) and
        `samples` [B, K, H, W, C], all in the model's normalised target units."""
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {method!r} (ddpm or ddim)")
        return self.sample(
            tf.convert_to_tensor(y, tf.float32), tf.constant(steps, tf.int32), tf.constant(samples, tf.int32),
            tf.constant(seed, tf.int32), tf.constant(method == "ddim"),
        )

    def _sample(self, y, steps, samples, seed, deterministic):
        model = self.model
        schedule = model.schedule
        y, size = pad_to_multiple(y, self.size_multiple)
        batch = tf.shape(y)[0]

        # tau(y) once per condition, then K copies of every condition (each condition's samples consecutive).
        tau = schedule.tau(y)
        magnitude = schedule.magnitude(tau)
        y_k = tf.repeat(y, samples, axis=0)
        tau_k = tf.repeat(tau, samples, axis=0)
        ones = tf.ones([tf.shape(y_k)[0], 1])
        T = tf.cast(steps, tf.float32)

        def log_alpha(i):
            t_i = ones * (tf.cast(i, tf.float32) / T)
            alpha = tf.clip_by_value(1.0 - schedule.beta(t_i, tau_k) / T, ALPHA_MIN, ALPHA_MAX)
            return tf.math.log(alpha)

        # log gbar_T = sum_i log alpha_i; the reverse loop then peels one alpha off per step.
        _, log_gbar_T = tf.while_loop(
            lambda i, acc: i <= steps,
            lambda i, acc: (i + 1, acc + log_alpha(i)),
            (tf.constant(1), tf.zeros_like(tau_k)),
        )

        z_T = tf.random.stateless_normal(tf.shape(tau_k), seed=tf.stack([seed, 0]))

        def step(i, z, log_gbar, x_hat):
            la = log_alpha(i)
            # gbar_0 = 1 exactly (no noise at t = 0), whatever the round-off of the running sum.
            log_gbar_prev = tf.where(i > 1, log_gbar - la, tf.zeros_like(la))
            # Floors keep x_hat finite where gbar underflows (a steep schedule, no clip) and keep round-off in the
            # running sum from making 1 - gbar negative.
            gbar = tf.exp(tf.maximum(log_gbar, LOG_GBAR_MIN))
            gbar_prev = tf.exp(tf.maximum(log_gbar_prev, LOG_GBAR_MIN))
            one_minus_gbar = tf.maximum(-tf.math.expm1(log_gbar), 0.0)
            one_minus_gbar_prev = tf.maximum(-tf.math.expm1(log_gbar_prev), 0.0)
            eps_hat = model((z, y_k, gbar))
            x_hat = (z - tf.sqrt(one_minus_gbar) * eps_hat) / tf.sqrt(gbar)
            if self.clip > 0:
                x_hat = tf.clip_by_value(x_hat, -self.clip, self.clip)
                # Keep eps_hat consistent with the clipped x_hat (as DDIM implementations do).
                eps_hat = (z - tf.sqrt(gbar) * x_hat) / tf.sqrt(tf.maximum(one_minus_gbar, 1e-12))
            sigma2 = one_minus_gbar_prev / tf.maximum(one_minus_gbar, 1e-12) * -tf.math.expm1(la)
            sigma2 = tf.where(deterministic, tf.zeros_like(sigma2), sigma2)
            noise = tf.random.stateless_normal(tf.shape(z), seed=tf.stack([seed, i]))
            z_prev = (
                tf.sqrt(gbar_prev) * x_hat
                + tf.sqrt(tf.maximum(one_minus_gbar_prev - sigma2, 0.0)) * eps_hat
                + tf.sqrt(sigma2) * noise
            )
            return i - 1, z_prev, log_gbar_prev, x_hat

        _, _, _, x_hat = tf.while_loop(
            lambda i, *_: i >= 1,
            step,
            (steps, z_T, log_gbar_T, tf.zeros_like(z_T)),
        )

        x = x_hat
        mean = model.prior_mean(y)
        if mean is not None:
            x = x / model.model_config.residual_scale + tf.repeat(mean, samples, axis=0)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        x = tf.reshape(x, [batch, samples, height, width, -1])
        mean = tf.reduce_mean(x, axis=1)
        # Sample standard deviation (ddof = 1): unbiased variance over the K samples; 0 for K = 1.
        k = tf.cast(samples, tf.float32)
        std = tf.math.reduce_std(x, axis=1) * tf.sqrt(k / tf.maximum(k - 1.0, 1.0))
        crop = lambda v: crop_to(v, size)  # noqa: E731
        return {
            "mean": crop(mean),
            "std": crop(std),
            "schedule": crop(magnitude),
            "samples": x[:, :, : size[0], : size[1], :],
        }


def schedule_agreement(model, y, steps: int = 200) -> float:
    """max |gamma(t_i, y) - gbar_i| over the sampling grid: how well the network's gamma and the running product
    of (1 - beta / T) the sampler uses agree (only as well as L_beta has enforced eq. 4; a useful diagnostic)."""
    schedule = model.schedule
    tau = schedule.tau(tf.convert_to_tensor(y, tf.float32))
    ones = tf.ones([tf.shape(tau)[0], 1])
    log_gbar = tf.zeros_like(tau)
    worst = 0.0
    for i in range(1, steps + 1):
        t_i = ones * (i / steps)
        alpha = tf.clip_by_value(1.0 - schedule.beta(t_i, tau) / steps, ALPHA_MIN, ALPHA_MAX)
        log_gbar += tf.math.log(alpha)
        worst = max(worst, float(tf.reduce_max(tf.abs(schedule.gamma(t_i, tau) - tf.exp(log_gbar)))))
    return worst
