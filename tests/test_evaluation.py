"""`cvdm-tf eval` end to end on tiny data, and the report's arithmetic."""

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cvdm_tf import metrics
from cvdm_tf.cli.main import main
from cvdm_tf.data.phantoms import cell_phantoms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    for i, phase in enumerate(cell_phantoms(2, 32, seed=5, peak=2.0)):
        tifffile.imwrite(folder / f"cell{i}.tif", phase)
    return folder


def test_eval_writes_per_image_and_mean_metrics(tiny_run, phantom_folder, tmp_path):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_run), "--task", "qpi", "--data",
                                       str(phantom_folder), "--samples", "2", "--steps", "3", "--out",
                                       str(report_path)])
    assert result.exit_code == 0, result.output
    assert "| cvdm |" in result.output and "| tie |" in result.output
    report = json.loads(report_path.read_text())
    assert [row["name"] for row in report["images"]] == ["cell0", "cell1"]
    for method in ("cvdm", "tie"):
        per_image = [row[method]["mae_rad"] for row in report["images"]]
        assert report["mean"][method]["mae_rad"] == pytest.approx(np.mean(per_image))
        for row in report["images"]:
            values = row[method]
            assert values["mae_paper"] == pytest.approx(values["mae_rad"] * 2 / 3.5)
            assert 0 < values["ms_ssim"] <= 1
    assert -1 <= report["images"][0]["cvdm"]["std_vs_error"] <= 1
    assert report["tie_regularization"] > 0 or report["tie_regularization"] == 0


def numpy_tie(pair, dz=1.0, lam=0.521, dx=0.21, regularization=1e-9, pad=False):
    """FFT TIE written independently: laplacian(phi) = -k dI/dz / mean(I0), Tikhonov in rad/pixel units; with
    `pad`, the source zero-padded by half its size on every side first (free-space boundaries)."""
    didz = (pair[..., 1] - pair[..., 0]) / (2 * dz)
    source = (2 * np.pi / lam) * dx**2 * didz / np.mean(0.5 * (pair[..., 0] + pair[..., 1]))
    height, width = source.shape
    margins = ((height + 1) // 2, (width + 1) // 2) if pad else (0, 0)
    source = np.pad(source, [(margins[0], margins[0]), (margins[1], margins[1])])
    ky = 2 * np.pi * np.fft.fftfreq(source.shape[0])[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(source.shape[1])[None, :]
    k2 = ky**2 + kx**2
    gain = np.where(k2 > 0, k2 / np.where(k2 > 0, k2**2 + regularization, 1), 0)
    phase = np.real(np.fft.ifft2(np.fft.fft2(source) * gain))[margins[0]:margins[0] + height,
                                                                margins[1]:margins[1] + width]
    return phase - phase.mean()


def test_eval_tie_score_matches_an_independent_computation(tiny_run, phantom_folder):
    from test_simulate import numpy_two_shot

    from cvdm_tf.evaluation import evaluate
    from cvdm_tf.runs import load_run

    config, task, model = load_run(tiny_run)
    report = evaluate(config, task, model, phantom_folder, noise="none", samples=1, steps=2,
                      baseline_options={"tie": {"regularization": 1e-9}})
    for row in report["images"]:
        truth = tifffile.imread(phantom_folder / f"{row['name']}.tif").astype(np.float64)
        estimate = numpy_tie(numpy_two_shot(truth))
        expected = metrics.mae(*metrics.offset_free(estimate, truth))
        assert row["tie"]["mae_rad"] == pytest.approx(expected, rel=0.02, abs=1e-4)


def test_eval_oracle_weight_and_cvdm_row_match_direct_computations(tiny_run, phantom_folder):
    """The oracle TIE weight eval reports is a minimum of the independent NumPy TIE's MAE over its grid neighbours
    (x / sqrt(10), x * sqrt(10)); the CVDM row is the offset-free MAE of `reconstruct` on the measurement
    simulated independently (test_simulate's NumPy two-shot), same seed."""
    from test_simulate import numpy_two_shot

    from cvdm_tf.evaluation import evaluate
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.runs import load_run
    from cvdm_tf.sampler import sampler_for

    config, task, model = load_run(tiny_run)
    report = evaluate(config, task, model, phantom_folder, noise="none", samples=2, steps=3, seed=7)
    weight = report["tie_regularization"]
    truths = {row["name"]: tifffile.imread(phantom_folder / f"{row['name']}.tif").astype(np.float64)
              for row in report["images"]}
    pairs = {name: numpy_two_shot(truth) for name, truth in truths.items()}

    def tie_mae(regularization):
        return np.mean([metrics.mae(*metrics.offset_free(numpy_tie(pairs[n], regularization=regularization), t))
                        for n, t in truths.items()])

    if weight > 0:
        assert tie_mae(weight) <= min(tie_mae(weight / 10**0.5), tie_mae(weight * 10**0.5)) * (1 + 1e-3)
    for row in report["images"]:
        out = reconstruct(model, task, pairs[row["name"]].astype(np.float32), samples=2, steps=3, seed=7,
                          sampler=sampler_for(model, config.sampler))  # the run's precision, as eval's
        direct = metrics.mae(*metrics.offset_free(out["mean"][..., 0].astype(np.float64), truths[row["name"]]))
        assert row["cvdm"]["mae_rad"] == pytest.approx(direct, rel=1e-3, abs=1e-4)
