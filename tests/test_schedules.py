"""The schedule contract: monotonicity, boundary values, closed forms, exact time derivatives."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from cvdm_tf.config import ModelConfig
from cvdm_tf.losses import consistency_loss, relative_consistency_loss, time_derivatives
from cvdm_tf.schedules import GlobalSchedule, MonotoneNet, make_schedule

KINDS = ("learned", "learned-global", "linear", "cosine")
TINY = dict(tau_base_filters=4, tau_depth=1, time_units=8)


def _randomise_time_networks(schedule, seed, scale):
    """Random raw weights of either sign (the kernels used are |W|) and arbitrary biases."""
    rng = np.random.default_rng(seed)
    for net in (schedule.rho_net, schedule.lambda_net):
        for weight in net.weights:
            values = rng.uniform(-scale, scale, weight.shape) if "kernel" in weight.path else rng.normal(0, 3, weight.shape)
            weight.assign(values.astype(weight.dtype))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 20.0))
def test_rho_is_non_decreasing_and_zero_at_zero(seed, scale):
    schedule = GlobalSchedule(time_units=8, dtype="float64")
    _randomise_time_networks(schedule, seed, scale)
    t = np.linspace(0.0, 1.0, 2001)[:, None]
    rho = schedule.rho(t).numpy()[:, 0]
    lam = schedule.lam(t).numpy()[:, 0]
    assert rho[0] == 0.0
    assert np.all(np.diff(rho) >= 0.0)
    assert np.all(lam > 0.0)


def test_ema_weights_stay_in_the_monotone_family():
    """Updates that push the kernels through zero, with Keras' EMA: the averaged raw weights go negative (where a
    NonNeg constraint would leave the EMA outside the family), yet the averaged network is still non-decreasing."""
    import keras

    net = MonotoneNet(8)
    net.build((None, 1))
    optimizer = keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=None)
    t = tf.random.uniform([32, 1], seed=1)
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(t))  # minimising pushes every kernel down, through zero
        optimizer.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
    optimizer.finalize_variable_values(net.trainable_variables)  # the sampler's weights: the EMA
    kernels = np.concatenate([w.numpy().ravel() for w in net.weights if "kernel" in w.path])
    assert (kernels < 0).any()  # the situation a constraint mishandles did occur
    grid = np.linspace(0.0, 1.0, 4001, dtype=np.float32)[:, None]
    assert np.all(np.diff(net(grid).numpy()[:, 0]) >= 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_contract_shapes_and_ranges(kind):
    schedule = make_schedule(ModelConfig(schedule=kind, target_channels=2, **TINY))
    y = tf.random.normal([3, 8, 12, 2])
    t = tf.constant([[0.0], [0.5], [1.0]])
    gamma, beta = schedule.gamma_of(t, y), schedule.beta_of(t, y)
    assert gamma.shape == beta.shape == (3, 8, 12, 2)
    g = gamma.numpy()
    np.testing.assert_allclose(g[0], 1.0)  # rho(0) = 0 exactly: no noise at t = 0
    assert np.all((g > 0) & (g <= 1)) or kind == "cosine"
    assert np.all(g[2] < g[1]) and np.all(g[1] < 1.0)
    assert np.all(beta.numpy() > 0)
    assert schedule.magnitude(schedule.tau(y)).shape == (3, 8, 12, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_autodiff_derivatives_match_finite_differences(kind):
    schedule = make_schedule(ModelConfig(schedule=kind, **TINY), dtype="float64")
    if kind.startswith("learned"):
        _randomise_time_networks(schedule, seed=1, scale=2.0)
    rng = np.random.default_rng(0)
    tau = tf.constant(rng.uniform(0.2, 3.0, (4, 5, 5, 1)))  # any positive tau(y): the time part is what varies
    t = tf.constant([[0.15], [0.4], [0.6], [0.85]], tf.float64)
    gamma, dgamma, d2gamma = time_derivatives(schedule, t, tau)
    h = 1e-4
    plus, minus = schedule.gamma(t + h, tau), schedule.gamma(t - h, tau)
    fd1 = (plus - minus) / (2 * h)
    fd2 = (plus - 2 * gamma + minus) / h**2
    rel = lambda a, b: float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))  # noqa: E731
    assert rel(dgamma, fd1) < 1e-3
    assert rel(d2gamma, fd2) < 1e-3


@pytest.mark.parametrize("kind", ("linear", "cosine"))
def test_consistency_residual_vanishes_when_rho_prime_is_lambda(kind):
    # Fixed schedules have rho' = lambda in closed form, so eq. 4 holds exactly.
    schedule = make_schedule(ModelConfig(schedule=kind))
    tau = schedule.tau(tf.zeros([8, 4, 4, 2]))
    t = tf.random.uniform([8, 1], 0.01, 0.95, seed=3)
    gamma, dgamma, _ = time_derivatives(schedule, t, tau)
    residual = consistency_loss(dgamma, schedule.beta(t, tau), gamma, tf.ones_like(gamma), tf.zeros_like(gamma))
    scale = float(tf.reduce_mean(tf.square(dgamma)))
    assert float(residual) < 1e-8 * max(scale, 1.0)


def test_consistency_residual_is_positive_when_lambda_differs_from_rho_prime():
    schedule = GlobalSchedule(time_units=8)
    schedule.lambda_net.out.bias.assign([5.0])  # lambda ~ softplus(5) ~ 5 while rho' ~ 10
    tau = schedule.tau(tf.zeros([8, 4, 4, 2]))
    t = tf.random.uniform([8, 1], 0.0, 0.3, seed=4)
    gamma, dgamma, _ = time_derivatives(schedule, t, tau)
    residual = consistency_loss(dgamma, schedule.beta(t, tau), gamma, tf.ones_like(gamma), tf.zeros_like(gamma))
    assert float(residual) > 0.1


def test_learned_schedule_starts_consistent():
    # Both time networks start at the same scale, so eq. 4 nearly holds at initialisation.
    schedule = make_schedule(ModelConfig(schedule="learned", **TINY))
    tau = schedule.tau(tf.random.normal([4, 8, 8, 2]))
    t = tf.random.uniform([4, 1], seed=5)
    gamma, dgamma, _ = time_derivatives(schedule, t, tau)
    beta = schedule.beta(t, tau)
    relative = tf.reduce_mean(tf.square(dgamma + beta * gamma)) / tf.reduce_mean(tf.square(dgamma))
    assert float(relative) < 0.05
    np.testing.assert_allclose(schedule.magnitude(tau).numpy(), 10.0, rtol=0.1)


@pytest.mark.parametrize("gauge", ("free", "unit"))
def test_log_rate_matches_finite_differences_and_relative_residual_is_tau_times_the_mismatch(gauge):
    """d log gamma/dt (returned for `loss.consistency = "relative"`) against central differences of log gamma,
    and the relative residual against its closed form tau^2 (lambda - rho')^2 with rho' by differences too."""
    schedule = make_schedule(ModelConfig(schedule="learned-global", gauge=gauge, **TINY), dtype="float64")
    _randomise_time_networks(schedule, seed=2, scale=1.5)
    tau = tf.constant(np.random.default_rng(1).uniform(0.2, 3.0, (4, 3, 3, 1)))
    t = tf.constant([[0.1], [0.35], [0.7], [0.95]], tf.float64)
    *_, dlog = time_derivatives(schedule, t, tau, with_log_rate=True)
    h = 1e-5
    fd = (schedule.log_gamma(t + h, tau) - schedule.log_gamma(t - h, tau)) / (2 * h)
    np.testing.assert_allclose(dlog.numpy(), fd.numpy(), rtol=1e-6)
    drho = ((schedule.rho(t + h) - schedule.rho(t - h)) / (2 * h)).numpy().reshape(-1, 1, 1, 1)
    lam = schedule.lam(t).numpy().reshape(-1, 1, 1, 1)
    beta = schedule.beta(t, tau)
    ones = tf.ones_like(tau)
    expected = np.mean((tau.numpy() * (lam - drho)) ** 2)
    np.testing.assert_allclose(float(relative_consistency_loss(dlog, beta, ones, 0 * ones)), expected, rtol=1e-6)


def test_unit_gauge_makes_tau_the_magnitude_and_spans_the_same_schedules():
    """gauge "unit": rho(1) = 1, so magnitude = tau; with the same time networks, the free gauge's schedule at tau
    equals the unit gauge's at tau * rho_free(1): the gauge removes the free scale and nothing else."""
    free = make_schedule(ModelConfig(schedule="learned-global", **TINY), dtype="float64")
    unit = make_schedule(ModelConfig(schedule="learned-global", gauge="unit", **TINY), dtype="float64")
    _randomise_time_networks(free, seed=3, scale=2.0)
    for a, b in zip(free.weights, unit.weights):
        b.assign(a)
    tau = tf.constant(np.random.default_rng(2).uniform(0.2, 3.0, (1, 4, 4, 1)))
    np.testing.assert_allclose(unit.rho(tf.ones([1, 1], tf.float64)).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(unit.magnitude(tau).numpy(), tau.numpy(), rtol=1e-12)
    rho_1 = float(free.rho(tf.ones([1, 1], tf.float64))[0, 0])
    for t in (0.05, 0.3, 0.8, 1.0):
        t = tf.constant([[t]], tf.float64)
        np.testing.assert_allclose(unit.gamma(t, tau * rho_1).numpy(), free.gamma(t, tau).numpy(), rtol=1e-10)


@pytest.mark.parametrize("gauge", ("free", "unit"))
def test_both_gauges_start_at_the_same_consistent_schedule(gauge):
    """Initialisation: magnitude tau rho(1) = 10 (gamma(1) = e^-10) and lambda ~= rho' in either gauge."""
    schedule = make_schedule(ModelConfig(schedule="learned", gauge=gauge, **TINY))
    tau = schedule.tau(tf.random.normal([2, 8, 8, 2]))
    np.testing.assert_allclose(schedule.magnitude(tau).numpy(), 10.0, rtol=0.1)
    t = tf.random.uniform([2, 1], seed=6)
    *_, dlog = time_derivatives(schedule, t, tau, with_log_rate=True)
    beta = schedule.beta(t, tau)
    assert float(tf.reduce_mean(tf.square(dlog + beta)) / tf.reduce_mean(tf.square(dlog))) < 0.05


def test_linear_schedule_closed_form():
    schedule = make_schedule(ModelConfig(schedule="linear", beta_min=0.1, beta_max=20.0))
    t = np.linspace(0, 1, 11)[:, None].astype("float32")
    tau = tf.ones([11, 1, 1, 1])
    expected_gamma = np.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    np.testing.assert_allclose(schedule.gamma(t, tau).numpy().reshape(-1, 1), expected_gamma, rtol=1e-5)
    np.testing.assert_allclose(schedule.beta(t, tau).numpy().reshape(-1, 1), 0.1 + 19.9 * t, rtol=1e-6)


def test_cosine_schedule_closed_form():
    s = 0.008
    schedule = make_schedule(ModelConfig(schedule="cosine", cosine_offset=s))
    t = np.linspace(0, 0.99, 12)[:, None]
    tau = tf.ones([12, 1, 1, 1])
    f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(schedule.gamma(t, tau).numpy().reshape(-1, 1), f(t) / f(0), rtol=1e-4, atol=1e-7)
    expected_beta = math.pi / (1 + s) * np.tan((t + s) / (1 + s) * math.pi / 2)
    np.testing.assert_allclose(schedule.beta(t, tau).numpy().reshape(-1, 1), expected_beta, rtol=1e-4)
    assert float(tf.reduce_max(schedule.gamma([[1.0]], tf.ones([1, 1, 1, 1])))) < 1e-6
