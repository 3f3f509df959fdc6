"""The sampler's update equations against a case with a known answer: the exact denoiser of a Gaussian target."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.config import ModelConfig, SamplerConfig
from cvdm_tf.errors import InputError
from cvdm_tf.sampler import Sampler, native_bfloat16, resolve_precision, schedule_agreement, time_grid
from cvdm_tf.schedules import LinearSchedule, make_schedule

BETA_MIN, BETA_MAX = 0.1, 20.0  # ModelConfig's linear schedule


class ExactGaussianModel(tf.Module):
    """x ~ N(mu, s^2) per pixel; the optimal noise prediction is E[eps | z] = sqrt(1-g) (z - sqrt(g) mu) / var(z).

    mu and s are numbers or arrays broadcasting to the target [B, H, W, 1] (a different Gaussian per pixel).
    """

    def __init__(self, mu, s, kind="linear", beta_max=BETA_MAX, condition_channels=1, depth=1):
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


class TauIsTheCondition(LinearSchedule):
    """The linear schedule with tau(y) = y: a pixel-wise schedule that honours the contract (tau > 0, target-shaped)
    and whose tau image the test chooses, e.g. tau = 3 on one half of the image and 0.5 on the other."""

    def tau(self, y):
        return y


def pixelwise_model(mu, s):
    """ExactGaussianModel whose schedule is gamma = exp(-y * rho(t)): the condition y is the tau image."""
    model = ExactGaussianModel(mu, s)
    model.schedule = TauIsTheCondition(BETA_MIN, BETA_MAX)
    return model


def linear_gamma(t, tau):
    """gamma(t) = exp(-tau rho(t)) of the linear schedule in closed form (float64, independent of the package)."""
    return np.exp(-tau * (BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2))


def ddim_gain(gammas, s):
    """DDIM (sigma = 0) with the exact denoiser of N(mu, s^2) is linear: with d_i = z_i - sqrt(g_i) mu, one step
    gives d_{i-1} = c_i d_i, c_i = (sqrt(g_i g_{i-1}) s^2 + sqrt((1 - g_i)(1 - g_{i-1}))) / (g_i s^2 + 1 - g_i),
    and g_0 = 1 makes d_0 = x - mu. So the output's std is prod_i c_i (z_T ~ N(0, 1)). By Cauchy-Schwarz c_i^2
    var(z_i) <= var(z_{i-1}): DDIM's own first-order error shrinks the spread, less as the steps shrink.

    gammas: gbar_1 .. gbar_T."""
    g = np.concatenate([[1.0], np.asarray(gammas, np.float64)])
    c = (np.sqrt(g[1:] * g[:-1]) * s**2 + np.sqrt((1 - g[1:]) * (1 - g[:-1]))) / (g[1:] * s**2 + 1 - g[1:])
    return float(np.prod(c))


def spread(out):
    samples = out["samples"].numpy().ravel()
    return samples.mean(), samples.std()


def log_snr_times(steps, tau_ref):
    """The log-snr grid t_0 .. t_T of the linear schedule in closed form (rho is a quadratic): log-SNR of
    exp(-tau_ref rho(t)) uniform in i from t_1 = 1 / T to t_T = 1, t_0 = 0."""
    a, b = BETA_MIN, BETA_MAX - BETA_MIN
    log_snr = lambda x: -x - np.log(-np.expm1(-x))  # noqa: E731
    first, last = log_snr(tau_ref * np.log(1 / linear_gamma(1 / steps, 1.0))), log_snr(tau_ref * (a + b / 2))
    levels = first + np.arange(steps) / max(steps - 1, 1) * (last - first)
    rho = np.log1p(np.exp(-levels)) / tau_ref
    return np.concatenate([[0.0], (-a + np.sqrt(a * a + 2 * b * rho)) / b])


def grid_times(steps, grid, tau_ref=1.0):
    return np.arange(steps + 1) / steps if grid == "uniform" else log_snr_times(steps, tau_ref)


EXACT_AND_PAPER = [("exact", "uniform"), ("exact", "log-snr"), ("paper", "uniform")]


@pytest.mark.parametrize("discretisation,grid", EXACT_AND_PAPER)
@pytest.mark.parametrize("method", ["ddpm", "ddim"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_exact_denoiser_reproduces_the_target_distribution(method, kind, discretisation, grid):
    """With the exact noise prediction the sampler must return N(mu, s^2), up to an O(1/T) discretisation error.
    Measured std for s = 0.2 at T = 10 / 50 / 100 / 400 / 1000, linear DDPM: exact 0.093 / 0.158 / 0.174 / 0.191 /
    0.198, exact log-snr 0.093 / 0.174 / 0.186 / 0.197 / 0.197, paper 0.069 / 0.155 / 0.173 / 0.191 / 0.198."""
    mu, s = 0.3, 0.2
    sampler = Sampler(ExactGaussianModel(mu, s, kind), clip=0.0, discretisation=discretisation, grid=grid)
    y = tf.zeros([1, 32, 32, 1])
    errors = {}
    for steps in (50, 400):
        mean, std = spread(sampler(y, steps=steps, samples=4, seed=0, method=method))  # 4096 independent draws
        assert abs(mean - mu) < 0.01
        errors[steps] = abs(std - s) / s
    assert errors[400] < 0.07
    assert errors[400] < errors[50] / 2  # the error shrinks with T


@pytest.mark.parametrize("grid", ["uniform", "log-snr"])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_exact_ddim_is_the_closed_form_map_at_any_number_of_steps(tau, grid):
    """With gbar_i = gamma(t_i, y), DDIM's output std is ddim_gain of gamma on the grid (computed here in float64
    from the closed-form schedule and grid, not by the package), at T = 2, 5, 10 and 50: within 3% (the Monte Carlo
    error of 4096 draws is 1.1%), and, since the same seed gives the same z_T, with the same ratio at every T (measured
    0.9933 throughout: the sample std of that z_T). The gain approaches s as T grows."""
    mu, s = 0.3, 1.0
    sampler = Sampler(pixelwise_model(mu, s), clip=0.0, grid=grid)
    y = tf.fill([1, 32, 32, 1], tau)
    gains, ratios = [], []
    for steps in (2, 5, 10, 50):
        mean, std = spread(sampler(y, steps=steps, samples=4, seed=0, method="ddim"))
        gains.append(ddim_gain(linear_gamma(grid_times(steps, grid, tau)[1:], tau), s))
        ratios.append(std / gains[-1])
        assert abs(mean - mu) < 0.02
    assert ratios == pytest.approx([1.0] * 4, rel=0.03)
    assert max(ratios) - min(ratios) < 2e-3
    assert gains == sorted(gains) and gains[-1] > 0.9 * s  # measured 0.91 - 0.96 at T = 50


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_exact_discretisation_beats_the_paper_at_few_steps(tau):
    """DDIM at T = 10, x ~ N(0.3, 1): exact reproduces the mean within 0.02 and the std within 20% (tau = 1) / 32%
    (tau = 3); measured 17.6% / 28.9%, which is DDIM's own first-order error (the closed form: 17.1% / 28.4%).
    The paper's eq. 10 loses more: measured 24.7% / 51.9%."""
    mu, s, steps = 0.3, 1.0, 10
    model = pixelwise_model(mu, s)
    y = tf.fill([1, 32, 32, 1], tau)
    errors = {}
    for discretisation in ("exact", "paper"):
        sampler = Sampler(model, clip=0.0, discretisation=discretisation)
        mean, std = spread(sampler(y, steps=steps, samples=4, seed=0, method="ddim"))
        assert abs(mean - mu) < 0.02
        errors[discretisation] = abs(std - s) / s
    assert errors["exact"] < {1.0: 0.2, 3.0: 0.32}[tau]
    assert errors["paper"] > errors["exact"] + 0.05


def test_gbar_is_gamma_on_the_grid():
    """exact: gbar_i = gamma(t_i, y) up to round-off, on both grids and with tau varying across the image;
    paper at T = 100: max |gamma - gbar| measured 0.019 (tau = 1) and 0.034 (tau = 3) for the linear schedule."""
    model = pixelwise_model(0.0, 1.0)
    for tau in (1.0, 3.0, np.where(np.arange(8) < 4, 1.0, 3.0).reshape(1, 1, 8, 1) * np.ones([1, 4, 1, 1])):
        y = tf.constant(tau * np.ones([1, 4, 8, 1]), tf.float32)
        for grid in ("uniform", "log-snr"):
            assert schedule_agreement(model, y, steps=100, discretisation="exact", grid=grid) < 1e-6
        assert schedule_agreement(model, y, steps=100, discretisation="paper") > 0.01


def test_fixed_schedule_agrees_with_its_discretisation():
    model = ExactGaussianModel(0.0, 1.0)
    # paper: gbar_i = prod(1 - beta/T) matches exp(-rho(t_i)) up to O(1/T)
    assert schedule_agreement(model, tf.zeros([1, 4, 4, 1]), steps=1000, discretisation="paper") < 0.02


@pytest.mark.parametrize("grid", ["uniform", "log-snr"])
@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_few_steps_are_never_degenerate(method, grid):
    """Issue 11: with eq. 10 every alpha clips to 1e-6 at T = 10 for tau >= 1, and the samples collapse to the
    mean. Exact discretisation at T = 2, 5, 10 with tau from 0.5 to 3 across the image: finite, and every pixel's
    samples differ (std > 1e-3; the closed form at T = 2, tau = 3, s = 1 is 0.022)."""
    tau = np.linspace(0.5, 3.0, 8, dtype="float32").reshape(1, 1, 8, 1) * np.ones([2, 8, 1, 1], "float32")
    for clip in (None, 0.0):
        sampler = Sampler(pixelwise_model(0.3, 1.0), clip=clip, grid=grid)
        for steps in (2, 5, 10):
            out = sampler(tau, steps=steps, samples=8, seed=0, method=method)
            assert np.isfinite(out["samples"].numpy()).all()
            assert out["std"].numpy().min() > 1e-3, steps


def test_the_paper_discretisation_is_still_eq_10():
    """discretisation="paper" keeps today's behaviour, collapse included: at T = 2 (tau = 1) every alpha clips, so
    the samples barely differ (measured std 0.001 where the exact discretisation gives 0.27)."""
    y = tf.ones([1, 16, 16, 1])
    paper = Sampler(pixelwise_model(0.3, 1.0), clip=0.0, discretisation="paper")
    assert spread(paper(y, steps=2, samples=4, method="ddim"))[1] < 0.01


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 2, 10, 100])
def test_log_snr_grid_is_uniform_in_log_snr(tau, steps):
    """For a spatially constant tau the grid is exactly log-SNR-uniform from t_1 = 1/T to t_T = 1 (checked against
    the closed-form inversion of the linear schedule's quadratic rho)."""
    schedule = TauIsTheCondition(BETA_MIN, BETA_MAX)
    t = time_grid(schedule, tf.fill([2, 4, 4, 1], tau), steps, "log-snr").numpy()
    assert t.shape == (steps + 1, 2, 1)
    t = t[:, 0, 0].astype(np.float64)
    assert t[0] == 0.0 and t[1] == pytest.approx(1 / steps, abs=1e-7) and t[-1] == 1.0
    assert (np.diff(t) > 0).all()
    np.testing.assert_allclose(t, log_snr_times(steps, tau), atol=2e-6)


def test_log_snr_grid_follows_the_geometric_mean_of_tau():
    """A tau image of 0.5 and 2 (geometric mean 1) gets the grid of tau = 1; scaling tau scales nothing else."""
    schedule = TauIsTheCondition(BETA_MIN, BETA_MAX)
    halves = np.where(np.arange(8) < 4, 0.5, 2.0).reshape(1, 1, 8, 1) * np.ones([1, 8, 1, 1])
    got = time_grid(schedule, tf.constant(halves, tf.float32), 20, "log-snr").numpy()[:, 0, 0]
    np.testing.assert_allclose(got, log_snr_times(20, 1.0), atol=2e-6)


@pytest.mark.parametrize("grid", ["uniform", "log-snr"])
def test_every_pixel_follows_its_own_schedule_and_distribution(grid):
    """A spatially varying tau and a different N(mu, s^2) in each quadrant of the image. DDIM at T = 10: each
    quadrant's std is its own closed form (within 5%; 4096 draws each, measured within 3%) and its mean its own mu.
    DDPM at T = 200: each quadrant reproduces its s within 10% (measured within 6%)."""
    quadrants = {  # (row, column): (tau, mu, s)
        (0, 0): (0.5, -0.5, 0.3), (0, 1): (3.0, 0.5, 1.0), (1, 0): (1.0, 0.0, 0.6), (1, 1): (2.0, 1.0, 0.4),
    }
    tau, mu, s = (np.kron(np.array([[quadrants[r, c][k] for c in (0, 1)] for r in (0, 1)]), np.ones([8, 8]))
                  [None, :, :, None].astype("float32") for k in range(3))
    sampler = Sampler(pixelwise_model(mu, s), clip=0.0, grid=grid)
    tau_ref = float(np.exp(np.log(tau).mean()))
    ddim = sampler(tau, steps=10, samples=64, seed=0, method="ddim")["samples"].numpy()[0]  # [K, 16, 16, 1]
    ddpm = sampler(tau, steps=200, samples=64, seed=0, method="ddpm")["samples"].numpy()[0]
    for (r, c), (tau_q, mu_q, s_q) in quadrants.items():
        quadrant = np.s_[:, 8 * r: 8 * r + 8, 8 * c: 8 * c + 8]
        gain = ddim_gain(linear_gamma(grid_times(10, grid, tau_ref)[1:], tau_q), s_q)
        assert ddim[quadrant].mean() == pytest.approx(mu_q, abs=0.03 * s_q + 0.01)
        assert ddim[quadrant].std() == pytest.approx(gain, rel=0.05), (r, c)
        assert ddpm[quadrant].mean() == pytest.approx(mu_q, abs=0.05 * s_q + 0.01)
        assert ddpm[quadrant].std() == pytest.approx(s_q, rel=0.1), (r, c)


class ResidualGaussianModel(ExactGaussianModel):
    """The exact denoiser of a residual around a prior mean, as the default configs diffuse (model.mean =
    "condition"): the diffusion's target is r = residual_scale (x - m(y)) ~ N(mu, s^2) per pixel, with the prior
    mean m(y) = y (the condition's one channel). The sampler's last stage must then return
    x = clip(m + r / residual_scale, -target_range, target_range)."""

    def __init__(self, mu, s, residual_scale=2.0, target_range=1.0, x_range=4.0):
        super().__init__(mu, s)
        self.model_config = dataclasses.replace(self.model_config, mean="condition", residual_scale=residual_scale,
                                                target_range=target_range, x_range=x_range)

    def prior_mean(self, y):
        return y


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_the_last_stage_adds_the_prior_mean_to_the_residual_over_its_scale_and_clips(method):
    """A point-mass residual r = +0.8 (top half) / -0.8 (bottom half) around a prior mean m that runs from -0.9 to
    0.9 across the image, residual_scale 2, target_range 1: every sample is exactly clip(m + r / 2, -1, 1) (a
    point mass makes x_hat = r at every step, whatever z), in float64 here. Both clips matter: m + r / 2 leaves
    [-1, 1] on 19% of the pixels. Measured max error 8e-8 (DDPM and DDIM); multiplying by the scale instead of
    dividing (m + 2 r) is off by up to 1.2."""
    height, width = 8, 16
    m = np.broadcast_to(np.linspace(-0.9, 0.9, width), (height, width))[None, ..., None].astype(np.float32)
    r = np.where(np.arange(height) < height // 2, 0.8, -0.8)[None, :, None, None] * np.ones_like(m)
    expected = np.clip(m.astype(np.float64) + r / 2.0, -1.0, 1.0)
    assert 0.1 < np.mean(np.abs(m + r / 2) > 1) < 0.3  # the target_range clip is exercised
    out = Sampler(ResidualGaussianModel(r.astype(np.float32), 0.0))(m, steps=10, samples=2, seed=4, method=method)
    samples = out["samples"].numpy()  # [1, K, H, W, 1]
    np.testing.assert_allclose(samples, np.broadcast_to(expected[:, None], samples.shape), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["mean"].numpy(), expected, rtol=0, atol=1e-5)


def test_a_gaussian_residual_is_scaled_back_by_the_residual_scale():
    """r ~ N(0.2, 0.4^2) around m = 0, residual_scale 2, DDIM at T = 10: the samples are m + r / 2, so their mean is
    0.1 and their std half of DDIM's closed-form gain for r (ddim_gain; z_T's own sample std makes the ratio
    0.9933, see test_exact_ddim_is_the_closed_form_map_at_any_number_of_steps). 4096 draws; the target clip at 1
    is 4.5 std away. Measured: mean 0.0995, std / (gain / 2) = 0.9933."""
    mu, s, steps = 0.2, 0.4, 10
    out = Sampler(ResidualGaussianModel(mu, s))(tf.zeros([1, 32, 32, 1]), steps=steps, samples=4, seed=0,
                                                method="ddim")
    mean, std = spread(out)
    gain = ddim_gain(linear_gamma(np.arange(1, steps + 1) / steps, 1.0), s)
    assert mean == pytest.approx(mu / 2, abs=0.005)
    assert std == pytest.approx(gain / 2, rel=0.03)


def ddim_reference(mu, s, clip, steps, z):
    """DDIM (sigma = 0) in float64 with the exact denoiser of N(mu, s^2), the linear schedule on t_i = i / T, x_hat
    clipped to [-clip, clip] and eps_hat recomputed from the clipped x_hat (the "predict x0, clip, re-derive eps"
    rule of DDIM implementations): written from the equations, independent of the package. Returns x_hat of the
    last step for every z_T in `z`."""
    g = linear_gamma(np.arange(steps + 1) / steps, 1.0)
    g[0] = 1.0
    for i in range(steps, 0, -1):
        eps = np.sqrt(1 - g[i]) * (z - np.sqrt(g[i]) * mu) / (g[i] * s**2 + 1 - g[i])
        x = np.clip((z - np.sqrt(1 - g[i]) * eps) / np.sqrt(g[i]), -clip, clip)
        eps = (z - np.sqrt(g[i]) * x) / np.sqrt(1 - g[i])
        z = np.sqrt(g[i - 1]) * x + np.sqrt(1 - g[i - 1]) * eps
    return x


def test_ddim_clips_x_hat_and_recomputes_eps_hat_from_it():
    """A narrow target N(1.5, 0.2^2) beyond the clip at 1, DDIM at T = 20. (An exact point mass would not do: its
    x_hat is mu at every step, whatever z, so its last clipped x_hat is the clip whatever the steps did.) With the
    clip and eps_hat recomputed from the clipped x_hat, the trajectory is pulled to the clip and stays there:
    the float64 reference (10^5 independent draws) gives mean 0.9994, 98.4% of the samples at the clip, 1% quantile
    0.983; measured here 0.9995 / 98.6% / 0.986 on 4096 draws. Keeping the network's own eps_hat after clipping
    drags z below the clip at every step: mean 0.882, 1.4% at the clip, 1% quantile 0.73 (the reference without
    the recompute). Without the clip the mean is mu (measured 1.4983)."""
    mu, s, steps, clip = 1.5, 0.2, 20, 1.0
    y = tf.zeros([1, 32, 32, 1])
    model = ExactGaussianModel(mu, s)
    samples = Sampler(model, clip=clip)(y, steps=steps, samples=4, seed=0, method="ddim")["samples"].numpy().ravel()
    reference = ddim_reference(mu, s, clip, steps, np.random.default_rng(0).normal(size=100_000))
    assert samples.max() <= clip
    assert samples.mean() == pytest.approx(reference.mean(), abs=0.003)
    at_clip = lambda v: np.mean(v >= clip - 1e-5)  # noqa: E731
    assert at_clip(samples) == pytest.approx(at_clip(reference), abs=0.02)
    assert np.quantile(samples, 0.01) == pytest.approx(np.quantile(reference, 0.01), abs=0.02)
    unclipped = Sampler(model, clip=0.0)(y, steps=steps, samples=4, seed=0, method="ddim")["samples"].numpy()
    assert unclipped.mean() == pytest.approx(mu, abs=0.01)


def test_options_are_checked():
    with pytest.raises(ValueError, match="discretisation"):
        Sampler(ExactGaussianModel(0.0, 1.0), discretisation="euler")
    with pytest.raises(ValueError, match="grid"):
        Sampler(ExactGaussianModel(0.0, 1.0), grid="cosine")
    with pytest.raises(InputError, match="sampler.grid"):
        SamplerConfig(grid="cosine")
    assert (SamplerConfig().discretisation, SamplerConfig().grid) == ("exact", "uniform")


def test_mean_and_std_are_over_the_k_samples():
    out = Sampler(ExactGaussianModel(0.0, 1.0), clip=0.0)(tf.zeros([2, 8, 8, 1]), steps=20, samples=5, seed=3)
    samples = out["samples"].numpy()
    np.testing.assert_allclose(out["mean"].numpy(), samples.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(out["std"].numpy(), samples.std(axis=1, ddof=1), rtol=1e-5)
    one = Sampler(ExactGaussianModel(0.0, 1.0))(tf.zeros([1, 8, 8, 1]), steps=5, samples=1)
    np.testing.assert_array_equal(one["std"].numpy(), 0.0)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_antithetic_pairs_cancel_in_the_mean_where_sampling_is_linear(method):
    """The exact denoiser of a Gaussian makes a sample linear in its noise (z_T and every step's): antithetic pairs
    then average to the noise-free path exactly, whatever the seed, and the std (ddof = 0 over K / 2 pairs) is
    unbiased for the target's s. Independent samples' mean scatters by s / sqrt(K)."""
    mu, s = 0.3, 0.5
    y = tf.zeros([2, 32, 32, 1])
    antithetic = Sampler(ExactGaussianModel(mu, s), clip=0.0, antithetic=True)
    independent = Sampler(ExactGaussianModel(mu, s), clip=0.0)
    means = [antithetic(y, steps=20, samples=4, seed=seed, method=method)["mean"].numpy() for seed in (0, 1)]
    np.testing.assert_allclose(means[0], means[1], atol=1e-5)
    assert np.abs(means[0] - mu).max() < 0.01
    scattered = independent(y, steps=20, samples=4, seed=0, method=method)["mean"].numpy()
    assert np.abs(scattered - mu).std() > 0.1
    out = antithetic(y, steps=400, samples=4, seed=2, method=method)
    drawn = out["samples"].numpy()  # [B, K, H, W, 1]: samples 2j and 2j + 1 mirror each other about the mean
    np.testing.assert_allclose(drawn[:, 0] + drawn[:, 1], drawn[:, 2] + drawn[:, 3], atol=1e-5)
    np.testing.assert_allclose(out["std"].numpy(), drawn.std(axis=1, ddof=0), rtol=1e-5)
    assert np.mean(out["std"].numpy() ** 2) == pytest.approx(s**2, rel=0.07)
    assert drawn[:, 0].std() == pytest.approx(s, rel=0.07)  # each sample alone is still a draw of N(mu, s^2)


def test_antithetic_sampling_needs_an_even_k():
    sampler = Sampler(ExactGaussianModel(0.0, 1.0), antithetic=True)
    with pytest.raises(InputError, match="K must be even"):
        sampler(tf.zeros([1, 8, 8, 1]), steps=2, samples=3)
    # The compiled graph, as exported (the message is matched in full: TF's names the calling test's own name).
    with pytest.raises(tf.errors.InvalidArgumentError, match="antithetic sampling: K must be even"):
        sampler.sample(tf.zeros([1, 8, 8, 1]), tf.constant(2), tf.constant(3), tf.constant(0), tf.constant(False))
    with pytest.raises(InputError, match="even"):
        SamplerConfig(samples=5, antithetic=True)
    # The chunked (cancellable) path draws the same pairs.
    whole = sampler(tf.zeros([1, 8, 8, 1]), steps=5, samples=2, seed=4)
    parts = sampler(tf.zeros([1, 8, 8, 1]), steps=5, samples=2, seed=4, chunk=2, callback=lambda *_: None)
    np.testing.assert_array_equal(parts["samples"].numpy(), whole["samples"].numpy())


@pytest.mark.parametrize("discretisation", ["exact", "paper"])
def test_a_schedule_steep_enough_to_underflow_gbar_still_samples_finite_values(discretisation):
    # beta_max = 200: gbar underflows float32 long before t = 1; with no clip x_hat divides by sqrt(gbar).
    sampler = Sampler(ExactGaussianModel(0.3, 0.2, beta_max=200.0), clip=0.0, discretisation=discretisation)
    out = sampler(tf.zeros([1, 8, 8, 1]), steps=100, samples=2)
    assert np.isfinite(out["samples"].numpy()).all()


def test_point_mass_target_is_recovered_exactly():
    sampler = Sampler(ExactGaussianModel(0.5, 1e-3), clip=0.0)
    out = sampler(tf.zeros([2, 8, 8, 1]), steps=50, samples=2, seed=1)
    np.testing.assert_allclose(out["mean"].numpy(), 0.5, atol=0.02)


def test_schedule_diagnostics_tell_a_pixelwise_schedule_from_a_global_one(rng):
    from cvdm_tf.model import CVDM
    from cvdm_tf.sampler import schedule_diagnostics

    y = tf.constant(rng.normal(size=(2, 16, 16, 2)), tf.float32)
    for kind in ("learned-global", "learned"):
        model = CVDM(ModelConfig(condition_channels=2, schedule=kind, base_filters=4, depth=2, tau_base_filters=4,
                                 tau_depth=1, time_units=4))
        if kind == "learned":  # the tau U-Net starts constant (zero output kernel): give it a spatial response
            for variable in model.schedule.tau_net.trainable_variables:
                variable.assign(variable + 0.3 * rng.normal(size=variable.shape).astype(np.float32))
        diagnostics = schedule_diagnostics(model, y, steps=20)
        if kind == "learned-global":
            assert diagnostics["schedule_spread"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert diagnostics["schedule_spread"] > 0.01
        assert 0 < diagnostics["gamma_1_max"] < 1
        # The cumulative-sum form agrees with the step-by-step walk of the sampler (float32 round-off apart).
        assert diagnostics["gbar_gap"] == pytest.approx(schedule_agreement(model, y, 20, discretisation="paper"),
                                                        rel=1e-5)
        assert diagnostics["gbar_gap"] > 0


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("method,discretisation,grid", [("ddpm", *options) for options in EXACT_AND_PAPER]
                         + [("ddim", "exact", "uniform")])
def test_sampling_in_chunks_gives_the_same_samples(method, discretisation, grid):
    """`chunk=N` (the GUI's cancellable path) hands (z, log gbar, x_hat) from one compiled run of N steps to the
    next and draws each step's noise from (seed, i): the samples equal the one-call loop's bit for bit, for any N
    (one step, N not dividing T, N > T), on a pixel-wise schedule and an odd size (padding and crop)."""
    sampler = Sampler(pixelwise_model(0.3, 0.5), clip=0.0, discretisation=discretisation, grid=grid)
    tau = np.where(np.arange(12) < 6, 1.0, 3.0) * np.ones([2, 9, 1, 1])  # [2, 9, 12, 1]
    y = tf.constant(tau.transpose(0, 1, 3, 2).reshape(2, 9, 12, 1), tf.float32)
    whole = sampler(y, steps=7, samples=3, seed=11, method=method)
    for chunk in (1, 3, 50):
        calls = []
        parts = sampler(y, steps=7, samples=3, seed=11, method=method, chunk=chunk,
                        callback=lambda done, total: calls.append((done, total)))
        for key in ("mean", "std", "schedule", "samples"):
            np.testing.assert_array_equal(parts[key].numpy(), whole[key].numpy(), err_msg=f"{key}, chunk {chunk}")
        assert calls == [(min(n, 7), 7) for n in range(chunk, 7 + chunk, chunk)]


def test_a_chunk_callback_that_raises_stops_sampling_after_that_chunk():
    """Cancelling from the callback: the exception propagates after the first chunk and no further step runs."""
    sampler = Sampler(pixelwise_model(0.3, 0.5), clip=0.0)
    calls = []

    def cancel(done, total):
        calls.append(done)
        raise Cancelled

    with pytest.raises(Cancelled):
        sampler(tf.ones([1, 8, 8, 1]), steps=1000, samples=2, seed=0, chunk=4, callback=cancel)
    assert calls == [4]
    with pytest.raises(ValueError, match="chunk"):
        sampler(tf.ones([1, 8, 8, 1]), steps=4, chunk=0)


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it():
    """"auto" reads the CPU's flags (no GPU here): AVX512_BF16 or AMX-BF16 -> bfloat16, else float32 (emulated
    bfloat16 would be slower); explicit choices pass through, anything else is refused."""
    zen4 = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    sapphire = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
    skylake = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
    assert native_bfloat16(zen4) and native_bfloat16(sapphire) and not native_bfloat16(skylake)
    assert resolve_precision("auto") in ("float32", "bfloat16")
    assert resolve_precision("float32") == "float32" and resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16")
