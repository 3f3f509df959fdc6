"""The four terms of CVDM's regularised loss (cvdm-math.md section 3), each on its own.

    L = L_diff + w * (L_beta + L_prior + alpha * L_gamma)

    paper        code                 what it is
    L_diff       diffusion_loss       || eps - eps_hat(z_t, y, gamma) ||^2
    L_beta       consistency_loss     || d gamma/dt + beta gamma ||^2 + || gamma(t_0) - 1 ||^2 + || gamma(t_1) ||^2
                 relative_consistency_loss   the same with || d log gamma/dt + beta ||^2 (option loss.consistency)
    L_prior      prior_loss           KL( N(sqrt(gamma_1) x, 1 - gamma_1) || N(0, 1) )
    L_gamma      smoothness_loss      || d^2 gamma / dt^2 ||^2

Each term is a mean over pixels and batch. `time_derivatives` gives d gamma/dt and d^2 gamma/dt^2 by autodiff in t; it runs inside the training step's GradientTape, which differentiates the result w.r.t. the weights.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def diffusion_loss(eps, eps_hat):
    """L_diff, the noise-prediction loss (the ELBO weight -SNR'(t) dropped, as in DDPM; appendix E.3)."""
    return tf.reduce_mean(tf.square(eps - eps_hat))


def consistency_loss(dgamma_dt, beta, gamma, gamma_start, gamma_end):
    """L_beta: the Deep-Galerkin residual of eq. 4, d gamma/dt = -beta gamma, plus the two boundary conditions."""
    residual = tf.reduce_mean(tf.square(dgamma_dt + beta * gamma))
    start = tf.reduce_mean(tf.square(gamma_start - 1.0))
    end = tf.reduce_mean(tf.square(gamma_end))
    return residual + start + end


def relative_consistency_loss(dlog_gamma_dt, beta, gamma_start, gamma_end):
    """L_beta with the residual of eq. 4 divided by gamma: d log gamma/dt + beta = tau (lambda - rho').

    The paper's residual is gamma times this, so its square weighs t by gamma^2, which vanishes as gamma -> 0 (at
    initialisation 5e-8 at t = 0.9 of its weight at t = 0.1) and leaves lambda unconstrained late in t; this one
    weighs every t alike. Same boundary conditions."""
    residual = tf.reduce_mean(tf.square(dlog_gamma_dt + beta))
    start = tf.reduce_mean(tf.square(gamma_start - 1.0))
    end = tf.reduce_mean(tf.square(gamma_end))
    return residual + start + end


def prior_loss(x, log_gamma_end):
    """L_prior = KL(q(z_1 | x) || N(0, 1)) with q = N(sqrt(gamma_1) x, 1 - gamma_1), element-wise, analytic.

    Taken from log gamma so that 1 - gamma = -expm1(log gamma) keeps its precision when gamma_1 is near 1 (at
    initialisation of a bad schedule) and near 0 (at the optimum); no clipping that would cut gradients.
    """
    mean = tf.exp(0.5 * log_gamma_end) * x
    variance = -tf.math.expm1(log_gamma_end)
    q = tfd.Normal(loc=mean, scale=tf.sqrt(tf.maximum(variance, 1e-12)))
    prior = tfd.Normal(loc=tf.zeros_like(x), scale=tf.ones_like(x))
    return tf.reduce_mean(tfd.kl_divergence(q, prior))


def smoothness_loss(d2gamma_dt2):
    """L_gamma: the second time derivative of gamma, which bounds the sampler's discretisation error (E.2)."""
    return tf.reduce_mean(tf.square(d2gamma_dt2))


def total_loss(terms: dict, w: float, alpha: float):
    """L = L_diff + w * (L_beta + L_prior + alpha * L_gamma) (+ the mean network's loss under zero-mean diffusion)."""
    total = terms["diffusion"] + w * (terms["consistency"] + terms["prior"] + alpha * terms["smoothness"])
    if "mean" in terms:
        total = total + terms["mean"]
    return total


def time_derivatives(schedule, t, tau, with_log_rate: bool = False):
    """gamma(t, tau), d gamma/dt and d^2 gamma/dt^2 (and with `with_log_rate` d log gamma/dt = -tau rho'),
    element-wise, exact.

    Separation of variables makes t enter gamma = exp(-tau * rho(t)) only through the per-example scalar rho(t),
    so rho'(t) and rho''(t) are taken by autodiff (nested `tf.GradientTape` on t; the examples of a batch do not
    interact in the time network, so the gradient of sum(rho) is each example's own derivative), and the chain
    rule through exp is exact:

        d gamma/dt     = -tau rho' gamma
        d^2 gamma/dt^2 = (tau^2 rho'^2 - tau rho'') gamma

    (Nested forward-mode accumulators inside the training step's GradientTape are not supported by TensorFlow.)
    Runs inside the training step's tape, which differentiates the results w.r.t. the weights.
    """
    t = tf.reshape(tf.cast(t, tau.dtype), [-1, 1])
    with tf.GradientTape() as outer:
        outer.watch(t)
        with tf.GradientTape() as inner:
            inner.watch(t)
            rho = schedule.rho(t)
        drho = inner.gradient(rho, t, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    d2rho = outer.gradient(drho, t, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    rho, drho, d2rho = (tf.reshape(v, [-1, 1, 1, 1]) for v in (rho, drho, d2rho))
    gamma = tf.exp(-tau * rho)
    dgamma = -tau * drho * gamma
    d2gamma = (tf.square(tau * drho) - tau * d2rho) * gamma
    if with_log_rate:
        return gamma, dgamma, d2gamma, -tau * drho
    return gamma, dgamma, d2gamma
