"""`cvdm-tf export --format bioimageio`: the built-in models' packages pass the BioImage Model Zoo's own model test
(`bioimageio.core.test_model`: the spec's validation, the test tensors reproduced by the zoo's TensorFlow runner,
and inference at several sizes and batch sizes), state the physical pixel sizes, and agree with the API."""

import zipfile

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cvdm_tf.cli.main import main


@pytest.mark.slow
@pytest.mark.parametrize("name, pixel_in, pixel_out, channels, estimate", [
    ("qpi", 0.21, 0.21, ["I_minus_dz", "I_plus_dz"], "mean"),
    ("biosr", 0.0626, 0.0313, ["widefield"], "mean_network"),
])
def test_builtin_package_passes_the_zoos_model_test(tmp_path, monkeypatch, name, pixel_in, pixel_out, channels,
                                                    estimate):
    from bioimageio.core import test_model

    # The zoo's TensorFlow runner unzips the weights into the working directory (and reuses what it finds there).
    monkeypatch.chdir(tmp_path)

    out = tmp_path / f"{name}.zip"
    result = CliRunner().invoke(main, ["export", "--model", f"builtin:{name}", "--format", "bioimageio",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = test_model(str(out))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    with zipfile.ZipFile(out) as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        output = np.load(package.open("test_reconstruction.npy"))
        measurement = np.load(package.open("test_measurement.npy"))
    [tensor_in], [tensor_out] = rdf["inputs"], rdf["outputs"]
    space_in = {axis["id"]: axis for axis in tensor_in["axes"] if axis["type"] == "space"}
    space_out = {axis["id"]: axis for axis in tensor_out["axes"] if axis["type"] == "space"}
    for axis in "yx":
        assert space_in[axis]["unit"] == space_out[axis]["unit"] == "micrometer"
        assert space_in[axis]["scale"] == pytest.approx(pixel_in)
        assert space_out[axis]["scale"] == pytest.approx(pixel_out)
    assert [a for a in tensor_in["axes"] if a["type"] == "channel"][0]["channel_names"] == channels
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.2312.02246"
    # The test output: the output grid, mean / std / schedule as channels, a non-negative, non-zero std.
    scale = round(pixel_in / pixel_out)
    assert output.shape == (1, scale * measurement.shape[1], scale * measurement.shape[2], 3)
    assert (output[..., 1] >= 0).all() and output[..., 1].max() > 0
    # The first channel is the card's point estimate, named so; BioSR's (the mean network's, no noise) is the API's.
    names = [a for a in tensor_out["axes"] if a["type"] == "channel"][0]["channel_names"]
    assert names[0].startswith(f"{estimate}_") and names[1].startswith("std_")
    if estimate == "mean_network":
        import cvdm_tf

        prediction = cvdm_tf.load(f"builtin:{name}").predict(measurement[0], samples=2, steps=1)
        assert prediction.estimate == estimate
        np.testing.assert_allclose(output[0, ..., 0], prediction.point_estimate,
                                   atol=1e-3 * np.abs(prediction.point_estimate).max())


def test_bioimageio_export_refuses_what_it_cannot_write(tmp_path):
    out = tmp_path / "model.tar"
    result = CliRunner().invoke(main, ["export", "--model", "builtin:qpi", "--format", "bioimageio", "--out", str(out)])
    assert result.exit_code == 2 and "a bioimage.io package is a .zip file" in result.output
    exists = tmp_path / "model.zip"
    exists.write_bytes(b"kept")
    result = CliRunner().invoke(main, ["export", "--model", "builtin:qpi", "--format", "bioimageio",
                                       "--out", str(exists)])
    assert result.exit_code == 2 and "exists" in result.output and exists.read_bytes() == b"kept"
