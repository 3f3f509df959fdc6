"""The sampler's update equations against a case with a known answer: the exact denoiser of a Gaussian target."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.config import ModelConfig
from cvdm_tf.sampler import Sampler, schedule_agreement
from cvdm_tf.schedules import make_schedule


class ExactGaussianModel(tf.Module):
    """x ~ N(mu, s^2) per pixel; the optimal noise prediction is E[eps | z] = sqrt(1-g) (z - sqrt(g) mu) / var(z)."""

    def __init__(self, mu, s, kind="linear", beta_max=20.0, condition_channels=1, depth=1):
        super().__init__()
        self.model_config = ModelConfig(schedule=kind, depth=depth, tau_depth=1, condition_channels=condition_channels,
                                        beta_max=beta_max)
        self.schedule = make_schedule(self.model_config)
        self.mu, self.s = mu, s

    def prior_mean(self, y):
        return None

    def __call__(self, inputs):
        z, _, g = inputs
        return tf.sqrt(1 - g) * (z - tf.sqrt(g) * self.mu) / (g * self.s**2 + 1 - g)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_exact_denoiser_reproduces_the_target_distribution(method, kind):
    """With the exact noise prediction the sampler must return N(mu, s^2), up to an O(1/T) discretisation error
    (measured: linear DDPM std 0.156 / 0.173 / 0.190 / 0.196 at T = 50 / 100 / 400 / 1000 for s = 0.2)."""
    mu, s = 0.3, 0.2
    sampler = Sampler(ExactGaussianModel(mu, s, kind), clip=0.0)
    y = tf.zeros([1, 32, 32, 1])
    errors = {}
    for steps in (50, 400):
        out = sampler(y, steps=steps, samples=4, seed=0, method=method)
        samples = out["samples"].numpy().ravel()  # 4096 independent draws
        assert abs(samples.mean() - mu) < 0.01
        errors[steps] = abs(samples.std() - s) / s
    assert errors[400] < 0.07
    assert errors[400] < errors[50] / 2  # the error shrinks with T


def test_mean_and_std_are_over_the_k_samples():
    out = Sampler(ExactGaussianModel(0.0, 1.0), clip=0.0)(tf.zeros([2, 8, 8, 1]), steps=20, samples=5, seed=3)
    samples = out["samples"].numpy()
    np.testing.assert_allclose(out["mean"].numpy(), samples.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(out["std"].numpy(), samples.std(axis=1, ddof=1), rtol=1e-5)
    one = Sampler(ExactGaussianModel(0.0, 1.0))(tf.zeros([1, 8, 8, 1]), steps=5, samples=1)
    np.testing.assert_array_equal(one["std"].numpy(), 0.0)


def test_a_schedule_steep_enough_to_underflow_gbar_still_samples_finite_values():
    # beta_max = 200: gbar underflows float32 long before t = 1; with no clip x_hat divides by sqrt(gbar).
    out = Sampler(ExactGaussianModel(0.3, 0.2, beta_max=200.0), clip=0.0)(tf.zeros([1, 8, 8, 1]), steps=100,
                                                                         samples=2)
    assert np.isfinite(out["samples"].numpy()).all()


def test_point_mass_target_is_recovered_exactly():
    sampler = Sampler(ExactGaussianModel(0.5, 1e-3), clip=0.0)
    out = sampler(tf.zeros([2, 8, 8, 1]), steps=50, samples=2, seed=1)
    np.testing.assert_allclose(out["mean"].numpy(), 0.5, atol=0.02)


def test_fixed_schedule_agrees_with_its_discretisation():
    model = ExactGaussianModel(0.0, 1.0)
    # gbar_i = prod(1 - beta/T) matches exp(-rho(t_i)) up to O(1/T)
    assert schedule_agreement(model, tf.zeros([1, 4, 4, 1]), steps=1000) < 0.02
