"""Loss terms against closed forms."""

import numpy as np
import tensorflow as tf

from cvdm_tf import losses


def test_prior_kl_equals_closed_form(rng):
    x = rng.uniform(-1, 1, (2, 6, 6, 1)).astype("float32")
    gamma = rng.uniform(0.001, 0.9, x.shape).astype("float32")
    kl = float(losses.prior_loss(tf.constant(x), tf.math.log(gamma)))
    m2 = gamma * x**2
    var = 1 - gamma
    closed = 0.5 * (var + m2 - 1.0 - np.log(var))  # KL(N(m, var) || N(0, 1))
    np.testing.assert_allclose(kl, closed.mean(), rtol=1e-5)


def test_prior_kl_is_zero_only_for_pure_noise():
    x = tf.ones([1, 4, 4, 1])
    assert float(losses.prior_loss(x, tf.fill(x.shape, -40.0))) < 1e-12
    assert float(losses.prior_loss(x, tf.fill(x.shape, -1.0))) > 0.1


def test_prior_kl_stays_finite_and_differentiable_near_gamma_one():
    log_gamma = tf.Variable(tf.fill([1, 4, 4, 1], -1e-7))
    with tf.GradientTape() as tape:
        kl = losses.prior_loss(tf.ones([1, 4, 4, 1]), log_gamma)
    grad = tape.gradient(kl, log_gamma)
    assert np.isfinite(float(kl)) and np.all(np.isfinite(grad.numpy()))


def test_consistency_loss_closed_form():
    gamma = tf.constant([[0.5]])
    loss = losses.consistency_loss(tf.constant([[-1.0]]), tf.constant([[1.0]]), gamma, tf.constant([[0.9]]),
                                   tf.constant([[0.2]]))
    np.testing.assert_allclose(float(loss), (-1.0 + 0.5) ** 2 + 0.1**2 + 0.2**2, rtol=1e-6)


def test_total_loss_weights():
    terms = {"diffusion": 1.0, "consistency": 2.0, "prior": 3.0, "smoothness": 4.0}
    np.testing.assert_allclose(float(losses.total_loss(terms, w=2.0, alpha=0.5)), 1 + 2 * (2 + 3 + 0.5 * 4))
