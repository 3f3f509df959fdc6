"""The calibration of the uncertainty map (metrics.calibration) against a simulated calibrated sampler, and its
units."""

import numpy as np
import pytest
import scipy.stats

from cvdm_tf import metrics


# Coverage of a calibrated K-sample std, P(|T_{K-1}| <= 1) and <= 2, from the table of cvdm-math.md section 10
# (simulated there): numbers typed from the reference, not the code's scipy call.
STUDENT_T_COVERAGE = {2: (0.50, 0.70), 4: (0.61, 0.86), 8: (0.65, 0.91), 16: (0.667, 0.936)}


@pytest.mark.parametrize("samples", sorted(STUDENT_T_COVERAGE))
def test_a_simulated_calibrated_sampler_meets_the_student_t_targets_and_its_bootstrap_ceiling(samples):
    # Per pixel, the truth and K samples are independent draws from one Gaussian: the sampler is calibrated.
    rng = np.random.default_rng(123 + samples)  # not calibration()'s own seed 0
    sigma = rng.lognormal(0.0, 0.5, (160, 160))
    centre = rng.normal(size=sigma.shape)
    drawn = centre + sigma * rng.normal(size=(samples, *sigma.shape))
    truth = centre + sigma * rng.normal(size=sigma.shape)
    mean, std = drawn.mean(axis=0), drawn.std(axis=0, ddof=1)
    result = metrics.calibration(std, mean - truth, samples)
    within_1, within_2 = STUDENT_T_COVERAGE[samples]
    assert result["within_1_std_target"] == pytest.approx(within_1, abs=0.006)
    assert result["within_2_std_target"] == pytest.approx(within_2, abs=0.006)
    assert result["within_1_std"] == pytest.approx(within_1, abs=0.012)  # binomial sd over 25600 px: 0.003
    assert result["within_2_std"] == pytest.approx(within_2, abs=0.012)
    # The ceiling is what this calibrated sampler's own std reaches, up to sampling noise (Spearman sd ~0.006).
    observed = metrics.rank_correlation(std, np.abs(mean - truth))
    assert result["std_vs_error_ceiling"] == pytest.approx(observed, abs=0.03)
    if samples == 2:
        # Taking the observed s as the true sigma would claim far more (0.72 in cvdm-math.md's example).
        assert result["std_vs_error_ceiling"] < 0.35


@pytest.mark.parametrize("samples", [4, 8])
def test_antithetic_pairs_in_the_linear_limit_meet_their_own_targets(samples):
    # A sample linear in its noise: pairs centre +- sigma a, their mean the posterior mean exactly; the std with
    # ddof = 0 has K / 2 degrees of freedom and no sqrt(1 + 1/K).
    rng = np.random.default_rng(7 + samples)
    sigma = rng.lognormal(0.0, 0.5, (160, 160))
    centre = rng.normal(size=sigma.shape)
    half = sigma * rng.normal(size=(samples // 2, *sigma.shape))
    drawn = centre + np.concatenate([half, -half])
    truth = centre + sigma * rng.normal(size=sigma.shape)
    mean, std = drawn.mean(axis=0), drawn.std(axis=0, ddof=0)
    result = metrics.calibration(std, mean - truth, samples, antithetic=True)
    if samples == 4:  # Student-t with 2 degrees of freedom in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
        assert result["within_1_std_target"] == pytest.approx(1 / np.sqrt(3), abs=1e-9)
        assert result["within_2_std_target"] == pytest.approx(2 / np.sqrt(6), abs=1e-9)
    assert result["within_1_std"] == pytest.approx(result["within_1_std_target"], abs=0.012)
    assert result["within_2_std"] == pytest.approx(result["within_2_std_target"], abs=0.012)
    observed = metrics.rank_correlation(std, np.abs(mean - truth))
    assert result["std_vs_error_ceiling"] == pytest.approx(observed, abs=0.03)


def test_the_gaussian_fractions_are_the_large_k_limit():
    target_1, target_2 = metrics.calibration_targets(10_000)
    # scipy's normal CDF, not the code's Student-t: P(|z| <= k) = 2 Phi(k) - 1.
    assert target_1 == pytest.approx(2 * scipy.stats.norm.cdf(1) - 1, abs=1e-4)
    assert target_2 == pytest.approx(2 * scipy.stats.norm.cdf(2) - 1, abs=1e-4)
    assert all(np.isnan(metrics.calibration_targets(1)))


def test_overconfident_std_is_caught_and_flat_std_cannot_rank(rng):
    std = rng.lognormal(0.0, 0.5, (128, 128))
    error = rng.normal(size=std.shape) * std * 3.0  # the samples spread a third of the real error
    result = metrics.calibration(std, error, 4)
    assert result["within_1_std"] < 0.35 and result["within_2_std"] < 0.6
    # A std map that barely varies can't order the pixels by error, however calibrated it is.
    flat = 1.0 + 1e-3 * rng.random((128, 128))
    wide = rng.lognormal(0.0, 1.0, (128, 128))
    assert abs(metrics.calibration(flat, error, 4)["std_vs_error_ceiling"]) < 0.05
    assert metrics.calibration(wide, error, 4)["std_vs_error_ceiling"] > 0.4


def test_biosr_spread_is_in_the_units_of_its_centred_error(rng):
    """BioSR scores percentile-normalised images: a std map must be divided by the same range."""
    from cvdm_tf.tasks import make_task

    task = make_task("biosr")
    estimate = rng.uniform(100.0, 600.0, (32, 32))
    truth = estimate + rng.normal(size=estimate.shape)
    estimate[0, 0], estimate[-1, -1] = 50.0, 700.0  # the extremes, which set the percentile range
    moved = estimate.copy()
    moved[1:-1, 1:-1] += 5.0  # moving an inner pixel by 5 input units moves its centred value by 5 / range
    change = task.centre(moved, truth)[0] - task.centre(estimate, truth)[0]
    spread = task.centre_spread(np.full(estimate.shape, 5.0), estimate)
    np.testing.assert_allclose(spread[1:-1, 1:-1], change[1:-1, 1:-1], rtol=1e-4)
    qpi = make_task("qpi")
    np.testing.assert_array_equal(qpi.centre_spread(np.full((4, 4), 0.3), estimate[:4, :4]), np.full((4, 4), 0.3))
