"""The calibration of the uncertainty map (metrics.calibration) against the Gaussian closed form, and its units."""

import numpy as np
import pytest
import scipy.stats

from cvdm_tf import metrics


def test_calibrated_errors_give_the_gaussian_fractions():
    rng = np.random.default_rng(123)  # not calibration()'s own seed 0, whose draws would correlate with these
    samples = 8
    std = rng.lognormal(0.0, 0.5, (256, 256))
    error = rng.normal(size=std.shape) * std * np.sqrt(1 + 1 / samples)
    result = metrics.calibration(std, error, samples)
    # scipy's normal CDF, not the code's constants: P(|z| <= k) = 2 Phi(k) - 1.
    assert result["within_1_std"] == pytest.approx(2 * scipy.stats.norm.cdf(1) - 1, abs=0.005)
    assert result["within_2_std"] == pytest.approx(2 * scipy.stats.norm.cdf(2) - 1, abs=0.003)
    # The ceiling is what this (calibrated) error reaches, up to sampling noise.
    assert result["std_vs_error_ceiling"] == pytest.approx(metrics.rank_correlation(std, np.abs(error)), abs=0.02)


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
