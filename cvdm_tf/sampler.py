"""Sampling (cvdm-math.md section 4): the schedule discretised on a time grid t_0 = 0 < t_1 < ... < t_T = 1,
ancestral (DDPM) or deterministic (DDIM) updates, K samples per condition in one batch, the whole loop one compiled
TensorFlow graph.

    paper               code           meaning
    T                   steps          number of sampling steps
    t_i                 times[i]       the time grid, [T + 1, B, 1]; t_0 = 0, t_T = 1          (grid, below)
    gbar_i              gbar           the signal variance step i uses (kept as its logarithm, log_gbar);
                                       exact: gamma(t_i, y); paper: prod_{j <= i} alpha_j; gbar_0 = 1
    alpha_i             alpha          gbar_i / gbar_{i-1} (kept as log_alpha);
                                       paper: clip(1 - beta(t_i, y) / T, 1e-6, 0.99999)        (eq. 10)
    eps_hat             eps_hat        denoiser(z_i, y, gbar_i)
    x_hat               x_hat          (z_i - sqrt(1 - gbar_i) eps_hat) / sqrt(gbar_i)
    sigma_i^2           sigma2         (1 - gbar_{i-1}) / (1 - gbar_i) * (1 - alpha_i);  0 for DDIM
    K                   samples        samples per condition (std: the sample standard deviation over them)
    eps, -eps           antithetic     samples 2j and 2j + 1 of a condition draw opposite noise (below)

Discretisation (`Sampler(discretisation=...)`):
    exact   gbar_i = gamma(t_i, y) = exp(log_gamma(t_i, tau)), the very gamma the denoiser was trained on, so
            log alpha_i = log_gamma(t_i) - log_gamma(t_{i-1}). Consistent at any T >= 1 (the default).
    paper   eq. 10: beta discretised by a Riemann sum (on a non-uniform grid, beta(t_i, y) (t_i - t_{i-1})).
            Agrees with gamma only as far as L_beta has enforced eq. 4 and only up to O(1/T): measured
            max |gamma - gbar| = 0.015 (tau = 1) and 0.061 (tau = 3) at T = 100, and every alpha clips to 1e-6
            (degenerate samples) at T = 10 with tau >= 1 or T = 20 with tau = 3 (issue 11).

Grid (`Sampler(grid=...)`):
    uniform   t_i = i / T.
    log-snr   t_1 = 1 / T, t_T = 1 and in between uniform steps in log-SNR = log(gamma / (1 - gamma)).
              The schedule is per pixel, so no single time grid is log-SNR-uniform at every pixel. The grid is
              uniform in the log-SNR of the reference schedule exp(-tau_ref rho(t)), tau_ref = the geometric mean
              of tau(y) over the condition's pixels and channels (invariant to the factorisation's free scale,
              tau -> c tau, rho -> rho / c; one grid per condition). Exactly log-SNR-uniform wherever tau =
              tau_ref (every spatially constant schedule: learned-global, linear, cosine); elsewhere, with
              x = tau rho(t), d logSNR/d x = -1 / (1 - exp(-x)), so a pixel's log-SNR steps are the reference's
              times a factor between 1 (low noise, x -> 0) and tau / tau_ref (high noise, x -> oo): uniform in
              both limits, smoothly varying between. t_i comes from rho by bisection (rho is monotone by
              construction). The denoiser is conditioned on gamma, not on t, so it accepts any grid.

tau(y) does not depend on t, so it is computed once per condition; each step runs only the tiny time network and
the denoiser. The loop is a `tf.while_loop` inside one `tf.function`: no Python loop over steps and no
`predict` call per step. Randomness is stateless (`tf.random.stateless_normal` seeded by (seed, step)), so the
same seed gives the same samples, also after export.

Precision (`Sampler(precision=...)`): "bfloat16" runs the denoiser's convolutions in bfloat16 (the same float32
weights, cast on use; `model.computing_in`), everything else (the schedule, gbar, the update) in float32. On a CPU
with native bfloat16 (AVX512_BF16 / AMX) a denoiser pass takes half the time (README: speed); the samples differ
from float32's by bfloat16 round-off in eps_hat (~3 significant digits), which moved no held-out score measurably
(README). "auto" (the configs' default) picks bfloat16 where the hardware has it (`native_bfloat16`), float32
elsewhere, where bfloat16 would be emulated and slower.

Antithetic pairs (`Sampler(antithetic=True)`, `sampler.antithetic`): the K samples of a condition come in K / 2
pairs whose noise is opposite, z_T and every step's ancestral noise (antithetic variates). Each sample is still a
draw of the model's posterior; only the pair is correlated. Where a sample is nearly linear in its noise (a
posterior narrow against the scale the denoiser bends on), the pair's noise cancels in the mean, so the mean of
K samples comes close to the posterior mean with few samples: on QPI's validation frames K = 4 x T = 4
antithetic is within 1.5% of K = 32 x T = 10 (20 times the passes), where 4 independent samples are 3.5-4.3%
behind (docs/results-qpi-camera.md); the built-in models sample this way. K must be even. The std is then
taken with ddof = 0: in the linear limit a pair (m + a, m - a) has its mean exactly at m, and K / 2 independent
pairs give (1 / K) sum (x_k - mean)^2 = (2 / K) sum_j a_j^2, unbiased for sigma^2 with K / 2 degrees of freedom
(`metrics.calibration` takes this into account when told the samples are antithetic).

Chunks (`sampler(y, ..., chunk=N, callback=fn)`): the same loop cut into compiled runs of N steps, with
`fn(done, T)` called in Python between them, so a GUI can show progress and cancel (fn raises) within N steps.
The state handed from chunk to chunk is (z_i, log gbar_i, x_hat) and every step draws its noise from (seed, i),
so the samples equal the one-call loop's for the same seed. Without `chunk` the one-call graph runs unchanged.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import tensorflow as tf

from cvdm_tf.config import SamplerConfig
from cvdm_tf.errors import InputError
from cvdm_tf.networks import crop_to, pad_to_multiple

ALPHA_MIN, ALPHA_MAX = 1e-6, 0.99999  # eq. 10's clip (paper discretisation only)
LOG_GBAR_MIN = -60.0  # gbar >= 8.8e-27: sqrt(gbar) stays a normal float32
BISECTIONS = 40  # log-snr grid: t to 2^-40 of [1/T, 1], below float32's resolution


class Sampler(tf.Module):
    """The sampler of a CVDM, as a `tf.Module` so that it exports as a SavedModel unchanged.

    Args:
        model: CVDM. Its schedule, denoiser and (zero-mean) mean network are used, never changed.
        clip: float or None. x_hat is clipped to [-clip, clip] in the diffusion's space; None takes the model's
            `x_range` (the range its targets were scaled to); 0 disables clipping.
        discretisation: str. "exact" (gbar_i = gamma(t_i, y)) or "paper" (eq. 10); see the module docstring.
        grid: str. "uniform" (t_i = i / T) or "log-snr"; see the module docstring.
        precision: str. "float32", "bfloat16" (the denoiser's compute dtype) or "auto" (bfloat16 where the
            hardware computes it natively, `native_bfloat16`); see the module docstring.
        antithetic: bool. Samples in pairs of opposite noise (K even); see the module docstring.

    All four options are static (fixed at construction), so the signature `sample(condition, steps, samples, seed,
    deterministic)` is the same for every choice.

    Example:
        sampler = Sampler(model, discretisation="exact", grid="log-snr")
        out = sampler(y, steps=10, samples=4, method="ddim")   # out["mean"], out["std"], ...
    """

    def __init__(self, model, clip: float | None = None, discretisation: str = "exact", grid: str = "uniform",
                 precision: str = "float32", antithetic: bool = False, name: str = "sampler"):
        super().__init__(name=name)
        _check_options(discretisation, grid)
        self.model = model
        self.clip = float(model.model_config.x_range if clip is None else clip)
        self.discretisation, self.grid, self.precision = discretisation, grid, resolve_precision(precision)
        self.antithetic = bool(antithetic)
        # The std of K independent samples (ddof = 1) or of K / 2 antithetic pairs (ddof = 0; module docstring).
        self.std_ddof = 0 if self.antithetic else 1
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

    def __call__(self, y, steps=200, samples=1, seed=0, method="ddpm", chunk=None, callback=None):
        """Sample. Returns a dict with `mean`, `std` (over the K samples), `schedule` (tau * rho(1)) and
        `samples` [B, K, H, W, C], all in the model's normalised target units; for a model with a mean network
        also `mean_network`, its own estimate (no samples): E[x | y] with an L2 loss, which the samples' mean estimates
        too; the median with L1 (`model.mean_loss`).

        chunk: int or None. None: all T steps in one compiled call. N: compiled runs of N steps with
            `callback(done, steps)` after each (may raise to stop; see the module docstring: same samples).
        """
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {method!r} (ddpm or ddim)")
        if self.antithetic and int(samples) % 2:
            raise InputError(f"{int(samples)} samples: this model samples in antithetic pairs (sampler.antithetic), "
                             "so K must be even")
        args = (tf.convert_to_tensor(y, tf.float32), tf.constant(steps, tf.int32), tf.constant(samples, tf.int32),
                tf.constant(seed, tf.int32), tf.constant(method == "ddim"))
        if chunk is None:
            return self.sample(*args)
        return self._sample_in_chunks(*args, chunk=int(chunk), callback=callback)

    def _sample(self, y, steps, samples, seed, deterministic):
        start = self._start(y, steps, samples, seed)
        walk = Discretisation(self.model.schedule, start["tau_k"], steps, self.discretisation, self.grid)
        _, _, x_hat = self._walk(walk, start["y_k"], start["z"], walk.last(), start["x_hat"], steps,
                                 tf.constant(0), seed, deterministic)
        return self._finish(start["y"], start["size"], start["magnitude"], x_hat, samples)

    def _start(self, y, steps, samples, seed):
        """Before the first step: the padded condition, tau(y) once per condition, then K copies of every condition
        (each condition's samples consecutive) and z_T."""
        schedule = self.model.schedule
        y, size = pad_to_multiple(y, self.size_multiple)
        tau = schedule.tau(y)
        y_k = tf.repeat(y, samples, axis=0)
        tau_k = tf.repeat(tau, samples, axis=0)
        guard = []
        if self.antithetic:  # the exported graph's guard (`__call__` checks before tracing)
            check = tf.debugging.assert_equal(samples % 2, 0, message="antithetic sampling: K must be even")
            guard = [check] if check is not None else []  # None when eager (it has raised already)
        # In a graph nothing orders the check before the pairs' reshape, which fails on an odd K with TF's own
        # message: the noise waits for the check.
        with tf.control_dependencies(guard):
            z_T = self._normal(tf.shape(tau_k), tf.stack([seed, 0]))
        return {"y": y, "size": tf.stack(size), "magnitude": schedule.magnitude(tau), "y_k": y_k, "tau_k": tau_k,
                "z": z_T, "x_hat": tf.zeros_like(z_T)}

    def _normal(self, shape, seed):
        """Standard normal noise [B K, H, W, C] for a step; antithetic: each condition's samples 2j and 2j + 1
        opposite (pairs never straddle two conditions, K being even)."""
        if not self.antithetic:
            return tf.random.stateless_normal(shape, seed=seed)
        half = tf.concat([[shape[0] // 2], shape[1:]], axis=0)
        eps = tf.random.stateless_normal(half, seed=seed)
        return tf.reshape(tf.stack([eps, -eps], axis=1), shape)

    def _walk(self, walk, y_k, z, log_gbar, x_hat, first, last, seed, deterministic):
        """Reverse steps i = first, first - 1, ..., last + 1: (z_last, log gbar_last, x_hat of step last + 1)."""
        model = self.model

        def step(i, z, log_gbar, x_hat):
            log_gbar_prev, la = walk.previous(i, log_gbar)
            gbar_prev = tf.exp(tf.maximum(log_gbar_prev, LOG_GBAR_MIN))
            one_minus_gbar = tf.maximum(-tf.math.expm1(log_gbar), 0.0)
            one_minus_gbar_prev = tf.maximum(-tf.math.expm1(log_gbar_prev), 0.0)
            x_hat, eps_hat = denoise(model, z, y_k, log_gbar, self.clip)
            sigma2 = one_minus_gbar_prev / tf.maximum(one_minus_gbar, 1e-12) * -tf.math.expm1(la)
            sigma2 = tf.where(deterministic, tf.zeros_like(sigma2), sigma2)
            noise = self._normal(tf.shape(z), tf.stack([seed, i]))
            z_prev = (
                tf.sqrt(gbar_prev) * x_hat
                + tf.sqrt(tf.maximum(one_minus_gbar_prev - sigma2, 0.0)) * eps_hat
                + tf.sqrt(sigma2) * noise
            )
            return i - 1, z_prev, log_gbar_prev, x_hat

        with self._denoiser_precision():  # the loop body is traced in here
            _, z, log_gbar, x_hat = tf.while_loop(lambda i, *_: i > last, step, (first, z, log_gbar, x_hat))
        return z, log_gbar, x_hat

    def _denoiser_precision(self):
        if self.precision == "float32":
            return contextlib.nullcontext()
        from cvdm_tf.model import computing_in

        return computing_in(self.model.denoiser, f"mixed_{self.precision}")

    def _finish(self, y, size, magnitude, x_hat, samples):
        """x_hat of the last step -> mean, std, schedule and samples, cropped to the condition's size."""
        model = self.model
        batch = tf.shape(y)[0]
        size = (size[0], size[1])
        x = x_hat
        prior = model.prior_mean(y)
        if prior is not None:
            x = x / model.model_config.residual_scale + tf.repeat(prior, samples, axis=0)
        bound = model.model_config.target_range
        clip = (lambda v: tf.clip_by_value(v, -bound, bound)) if bound > 0 else (lambda v: v)  # noqa: E731
        x = clip(x)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        x = tf.reshape(x, [batch, samples, height, width, -1])
        mean = tf.reduce_mean(x, axis=1)
        std = sample_std(x, ddof=self.std_ddof)
        crop = lambda v: crop_to(v, size)  # noqa: E731
        out = {
            "mean": crop(mean),
            "std": crop(std),
            "schedule": crop(magnitude),
            "samples": x[:, :, : size[0], : size[1], :],
        }
        if getattr(model, "mean_net", None) is not None:  # the mean network's own estimate, without the samples
            out["mean_network"] = crop(clip(prior))
        return out

    def _sample_in_chunks(self, y, steps, samples, seed, deterministic, chunk, callback):
        """`_sample` as compiled runs of `chunk` steps; the state between them is (z, log gbar, x_hat)."""
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of steps, got {chunk}")
        if not hasattr(self, "_chunk_functions"):
            # Made on first use only: an exported sampler (a tf.Module) keeps just `sample`.
            self._chunk_functions = self._compile_chunks()
        start_fn, walk_fn, finish_fn = self._chunk_functions
        start = start_fn(y, steps, samples, seed)
        z, log_gbar, x_hat = start["z"], start["log_gbar"], start["x_hat"]
        total = int(steps)
        i = total
        while i >= 1:
            last = max(i - chunk, 0)
            z, log_gbar, x_hat = walk_fn(start["y_k"], start["tau_k"], z, log_gbar, x_hat, tf.constant(i),
                                         tf.constant(last), steps, seed, deterministic)
            i = last
            if callback is not None:
                callback(total - i, total)
        return finish_fn(start["y"], start["size"], start["magnitude"], x_hat, samples)

    def _compile_chunks(self):
        config = self.model.model_config
        condition = tf.TensorSpec([None, None, None, config.condition_channels], tf.float32)
        target = tf.TensorSpec([None, None, None, config.target_channels], tf.float32)
        scalar = tf.TensorSpec([], tf.int32)

        def start(y, steps, samples, seed):
            out = self._start(y, steps, samples, seed)
            walk = Discretisation(self.model.schedule, out["tau_k"], steps, self.discretisation, self.grid)
            return {**out, "log_gbar": walk.last()}

        def walk(y_k, tau_k, z, log_gbar, x_hat, first, last, steps, seed, deterministic):
            grid = Discretisation(self.model.schedule, tau_k, steps, self.discretisation, self.grid)
            return self._walk(grid, y_k, z, log_gbar, x_hat, first, last, seed, deterministic)

        return (
            tf.function(start, input_signature=[condition, scalar, scalar, scalar]),
            tf.function(walk, input_signature=[condition, target, target, target, target, scalar, scalar, scalar,
                                               scalar, tf.TensorSpec([], tf.bool)]),
            tf.function(self._finish, input_signature=[condition, tf.TensorSpec([2], tf.int32), target, target,
                                                       scalar]),
        )


def denoise(model, z, y, log_gbar, clip: float = 0.0):
    """(x_hat, eps_hat) of one step: the denoiser's eps_hat(z, y, gbar) and x_hat = (z - sqrt(1 - gbar) eps_hat) /
    sqrt(gbar); with clip > 0, x_hat clipped to [-clip, clip] and eps_hat made consistent with it (as DDIM
    implementations do). Floors keep x_hat finite where gbar underflows (a steep schedule, no clip) and keep
    round-off from making 1 - gbar negative."""
    gbar = tf.exp(tf.maximum(log_gbar, LOG_GBAR_MIN))
    one_minus_gbar = tf.maximum(-tf.math.expm1(log_gbar), 0.0)
    eps_hat = model((z, y, gbar))
    x_hat = (z - tf.sqrt(one_minus_gbar) * eps_hat) / tf.sqrt(gbar)
    if clip > 0:
        x_hat = tf.clip_by_value(x_hat, -clip, clip)
        eps_hat = (z - tf.sqrt(gbar) * x_hat) / tf.sqrt(tf.maximum(one_minus_gbar, 1e-12))
    return x_hat, eps_hat


class Discretisation:
    """gbar_i on the time grid, walked from i = T down to 1 as the sampling loop does.

    Args:
        schedule: Schedule. The contract: tau, rho, log_gamma, beta.
        tau: tensor [B, H, W, C]. tau(y), computed once per condition.
        steps: int or int32 scalar tensor. T >= 1.
        discretisation, grid: str. As in `Sampler`.

    `times` is the grid [T + 1, B, 1]; `last()` is log gbar_T; `previous(i, log gbar_i)` gives
    (log gbar_{i-1}, log alpha_i), with gbar_0 = 1 exactly.
    """

    def __init__(self, schedule, tau, steps, discretisation: str = "exact", grid: str = "uniform"):
        _check_options(discretisation, grid)
        self.schedule, self.tau = schedule, tau
        self.steps = tf.cast(steps, tf.int32)
        self.paper, self.uniform = discretisation == "paper", grid == "uniform"
        self.times = time_grid(schedule, tau, self.steps, grid)

    def log_gamma(self, i):
        return self.schedule.log_gamma(self.times[i], self.tau)

    def log_alpha_paper(self, i):
        """eq. 10: log clip(1 - beta(t_i, y) dt, 1e-6, 0.99999), dt = 1 / T on the uniform grid."""
        beta = self.schedule.beta(self.times[i], self.tau)
        if self.uniform:
            rate = beta / tf.cast(self.steps, beta.dtype)
        else:
            rate = beta * tf.reshape(self.times[i] - self.times[i - 1], [-1, 1, 1, 1])
        return tf.math.log(tf.clip_by_value(1.0 - rate, ALPHA_MIN, ALPHA_MAX))

    def last(self):
        """log gbar_T."""
        if not self.paper:
            return self.log_gamma(self.steps)
        # log gbar_T = sum_i log alpha_i; the reverse loop then peels one alpha off per step.
        _, log_gbar = tf.while_loop(
            lambda i, acc: i <= self.steps,
            lambda i, acc: (i + 1, acc + self.log_alpha_paper(i)),
            (tf.constant(1), tf.zeros_like(self.tau)),
        )
        return log_gbar

    def previous(self, i, log_gbar):
        """(log gbar_{i-1}, log alpha_i) from log gbar_i; gbar_0 = 1 exactly (no noise at t = 0)."""
        zero = tf.zeros_like(log_gbar)
        if self.paper:
            la = self.log_alpha_paper(i)
            # gbar_0 = 1 whatever the round-off of the running sum.
            return tf.where(i > 1, log_gbar - la, zero), la
        log_gbar_prev = tf.where(i > 1, self.log_gamma(tf.maximum(i - 1, 0)), zero)
        # rho is monotone by construction; the minimum only guards round-off (alpha <= 1, sigma2 >= 0).
        return log_gbar_prev, tf.minimum(log_gbar - log_gbar_prev, 0.0)


def sample_std(samples, ddof: int = 1):
    """Sample standard deviation over the K axis of samples [B, K, ...]: ddof = 1, the unbiased variance of K
    independent samples (0 for K = 1); ddof = 0 for antithetic pairs (module docstring)."""
    k = tf.cast(tf.shape(samples)[1], tf.float32)
    if ddof == 0:
        return tf.math.reduce_std(samples, axis=1)
    return tf.math.reduce_std(samples, axis=1) * tf.sqrt(k / tf.maximum(k - 1.0, 1.0))


def sample_median(samples):
    """Per-pixel median over the K axis of samples [B, K, ...], as numpy.median: the middle sample, or the mean of
    the two middle ones for an even K."""
    k = tf.shape(samples)[1]
    ordered = tf.sort(samples, axis=1)
    return 0.5 * (tf.gather(ordered, (k - 1) // 2, axis=1) + tf.gather(ordered, k // 2, axis=1))


def time_grid(schedule, tau, steps, grid: str = "uniform"):
    """The sampling times t_0 = 0 < t_1 < ... < t_T = 1 as [T + 1, B, 1] (module docstring: grid)."""
    dtype = tau.dtype
    steps = tf.cast(steps, tf.int32)
    T = tf.cast(steps, dtype)
    shape = [steps + 1, tf.shape(tau)[0], 1]
    if grid == "uniform":
        return tf.broadcast_to(tf.reshape(tf.cast(tf.range(steps + 1), dtype) / T, [-1, 1, 1]), shape)
    if grid != "log-snr":
        raise ValueError(f"unknown grid {grid!r} ({' or '.join(SamplerConfig.GRIDS)})")

    def rho(t):  # any shape -> same shape
        return tf.reshape(tf.cast(schedule.rho(tf.reshape(t, [-1, 1])), dtype), tf.shape(t))

    tau_ref = tf.exp(tf.reduce_mean(tf.math.log(tau), axis=[1, 2, 3]))  # [B], geometric mean
    ends = rho(tf.stack([1.0 / T, tf.ones([], dtype)]))  # rho(1 / T), rho(1)
    log_snr_first, log_snr_last = _log_snr(tau_ref * ends[0]), _log_snr(tau_ref * ends[1])
    i = tf.cast(tf.range(1, steps + 1), dtype)[:, None]  # [T, 1]
    fraction = (i - 1.0) / tf.maximum(T - 1.0, 1.0)
    log_snr = log_snr_first + fraction * (log_snr_last - log_snr_first)  # [T, B]
    # log SNR = -log(expm1(x)) with x = tau_ref rho(t), so rho(t_i) = softplus(-log SNR_i) / tau_ref.
    target = tf.nn.softplus(-log_snr) / tau_ref

    def bisect(n, low, high):
        middle = 0.5 * (low + high)
        below = rho(middle) < target
        return n + 1, tf.where(below, middle, low), tf.where(below, high, middle)

    _, low, high = tf.while_loop(
        lambda n, *_: n < BISECTIONS, bisect,
        (tf.constant(0), tf.fill(tf.shape(target), 1.0 / T), tf.ones_like(target)),
    )
    t = 0.5 * (low + high)
    t = tf.where(i == 1.0, 1.0 / T, tf.where(i == T, tf.ones_like(t), t))  # the ends exactly
    return tf.concat([tf.zeros_like(t[:1]), t], axis=0)[..., None]


def _log_snr(x):
    """log(gamma / (1 - gamma)) for gamma = exp(-x), stable for large x (no expm1(x) overflow)."""
    x = tf.maximum(x, 1e-30)
    return -x - tf.math.log(-tf.math.expm1(-x))


def resolve_precision(precision: str) -> str:
    """"float32" or "bfloat16" for a `sampler.precision`; "auto" is bfloat16 where `native_bfloat16()`."""
    if precision not in SamplerConfig.PRECISIONS:
        raise ValueError(f"unknown sampler precision {precision!r} (one of {', '.join(SamplerConfig.PRECISIONS)})")
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


def native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this machine computes bfloat16 in hardware, where it halves the denoiser's time: every visible GPU
    of compute capability >= 8.0 (Ampere and later), or without a GPU a CPU with AVX512_BF16 or AMX (the flags
    of Linux's /proc/cpuinfo, or `cpuinfo`). Elsewhere bfloat16 is emulated and slower than float32."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
        return all(tuple(d.get("compute_capability", (0, 0))) >= (8, 0) for d in details)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def _check_options(discretisation, grid):
    if discretisation not in SamplerConfig.DISCRETISATIONS:
        raise ValueError(f"unknown discretisation {discretisation!r} "
                         f"({' or '.join(SamplerConfig.DISCRETISATIONS)})")
    if grid not in SamplerConfig.GRIDS:
        raise ValueError(f"unknown grid {grid!r} ({' or '.join(SamplerConfig.GRIDS)})")


def schedule_agreement(model, y, steps: int = 200, discretisation: str = "exact", grid: str = "uniform") -> float:
    """max |gamma(t_i, y) - gbar_i| over the sampling grid, with gbar_i exactly as the sampler computes it.

    "exact": 0 up to float round-off by construction. "paper": how well the network's gamma and the running
    product of eq. 10 agree (only as well as L_beta has enforced eq. 4, and up to O(1/T)): a useful diagnostic of
    a trained model.
    """
    schedule = model.schedule
    tau = schedule.tau(tf.convert_to_tensor(y, tf.float32))
    walk = Discretisation(schedule, tau, steps, discretisation, grid)
    log_gbar = walk.last()
    worst = 0.0
    for i in range(steps, 0, -1):
        gamma = schedule.gamma(walk.times[i], tau)
        worst = max(worst, float(tf.reduce_max(tf.abs(gamma - tf.exp(log_gbar)))))
        log_gbar, _ = walk.previous(tf.constant(i), log_gbar)
    return worst


def schedule_diagnostics(model, y, steps: int) -> dict:
    """What the learned schedule does on conditions y, logged during training (metrics.csv, TensorBoard):

        schedule_spread   std / mean over the pixels of the magnitude tau(y) rho(1), averaged over the batch:
                          0 for a global schedule; how much the schedule really varies per pixel
        gamma_1_max       max gamma(1, y): the forward process should end in (almost) pure noise
        gbar_gap          max |gamma(t_i, y) - gbar_i| of the paper's eq. 10 discretisation at T = `steps`:
                          how well L_beta has tied beta to gamma (`schedule_agreement`)
    """
    schedule = model.schedule
    y = tf.convert_to_tensor(y, tf.float32)
    tau = schedule.tau(y)
    magnitude = schedule.magnitude(tau)
    axes = [1, 2, 3]
    spread = tf.math.reduce_std(magnitude, axis=axes) / tf.maximum(tf.reduce_mean(magnitude, axis=axes), 1e-12)
    gamma_1 = schedule.gamma(tf.ones([tf.shape(y)[0], 1]), tau)
    # gbar_i of eq. 10 on t_i = i / T for all i at once: a cumulative sum of log alpha over the T copies of tau
    # (`schedule_agreement` walks the same grid step by step, as the sampler does; one tensor op is cheaper here).
    batch = tf.shape(tau)[0]
    t = tf.repeat(tf.range(1, steps + 1, dtype=tf.float32) / steps, batch)[:, None]
    taus = tf.tile(tau, [steps, 1, 1, 1])
    log_alpha = tf.math.log(tf.clip_by_value(1.0 - schedule.beta(t, taus) / steps, ALPHA_MIN, ALPHA_MAX))
    log_gbar = tf.cumsum(tf.reshape(log_alpha, tf.concat([[steps, batch], tf.shape(log_alpha)[1:]], 0)), axis=0)
    gamma = tf.reshape(schedule.gamma(t, taus), tf.shape(log_gbar))
    return {"schedule_spread": float(tf.reduce_mean(spread)), "gamma_1_max": float(tf.reduce_max(gamma_1)),
            "gbar_gap": float(tf.reduce_max(tf.abs(gamma - tf.exp(log_gbar))))}


def sampler_for(model, sampler_config=None):
    """The sampler of a trained model: a `Sampler` with the run's discretisation and time grid, or, for the
    regression baseline, its `Predictor` (same contract, one answer)."""
    if getattr(model, "is_regression", False):
        from cvdm_tf.regression import Predictor

        return Predictor(model)
    if sampler_config is None:
        return Sampler(model)
    return Sampler(model, discretisation=sampler_config.discretisation, grid=sampler_config.grid,
                   precision=sampler_config.precision, antithetic=sampler_config.antithetic)
