"""`cvdm-tf simulate` end to end, checked against an independent numpy Fresnel implementation."""

import subprocess
import sys

import numpy as np
import tifffile
from click.testing import CliRunner
from skimage import io as skio

from cvdm_tf.cli.main import main


def numpy_two_shot(phase, dz=1.0, lam=0.521, dx=0.21):
    """Goodman's transfer function, written independently with numpy (cvdm-math.md section 6)."""
    height, width = phase.shape
    fy = np.fft.fftfreq(height, d=dx)[:, None]
    fx = np.fft.fftfreq(width, d=dx)[None, :]
    field = np.exp(1j * phase.astype(np.float64))
    out = []
    for z in (-dz, dz):
        h = np.exp(1j * 2 * np.pi * z / lam) * np.exp(-1j * np.pi * lam * z * (fx**2 + fy**2))
        out.append(np.abs(np.fft.ifft2(np.fft.fft2(field) * h)) ** 2)
    return np.stack(out, axis=-1)


def test_simulate_writes_raw_pairs_that_agree_with_numpy(tmp_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    phase = rng.uniform(0, 2.0, (24, 20)).astype(np.float32)
    tifffile.imwrite(src / "float_phase.tif", phase)
    gray = (rng.uniform(0, 1, (16, 28)) * 255).astype(np.uint8)
    skio.imsave(src / "eight_bit.png", gray, check_contrast=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["simulate", "--task", "qpi", "--input", str(src), "--out", str(out),
                                       "--defocus", "1.5", "--phase-max", "3.0"])
    assert result.exit_code == 0, result.output
    # float TIFF: phase in radians as it is
    pair = tifffile.imread(out / "float_phase.tif")
    assert pair.dtype == np.float32 and pair.shape == (24, 20, 2)
    np.testing.assert_allclose(tifffile.imread(out / "float_phase_phase.tif"), phase)
    np.testing.assert_allclose(pair, numpy_two_shot(phase, dz=1.5), atol=2e-5)
    # 8-bit image: scaled from [0, 255] to [0, phase_max]
    scaled = tifffile.imread(out / "eight_bit_phase.tif")
    np.testing.assert_allclose(scaled, gray / 255.0 * 3.0, atol=1e-6)
    np.testing.assert_allclose(tifffile.imread(out / "eight_bit.tif"), numpy_two_shot(scaled, dz=1.5), atol=2e-5)


def test_simulate_noise_is_seeded(tmp_path, rng):
    tifffile.imwrite(tmp_path / "p.tif", rng.uniform(0, 1, (16, 16)).astype(np.float32))
    outputs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        result = CliRunner().invoke(main, ["simulate", "--input", str(tmp_path / "p.tif"), "--out",
                                           str(tmp_path / name), "--noise", "paper", "--seed", str(seed)])
        assert result.exit_code == 0, result.output
        outputs.append(tifffile.imread(tmp_path / name / "p.tif"))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_simulate_bad_input_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.tif").write_bytes(b"")  # empty: not an image
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cvdm_tf.cli.main", "simulate", "--input", str(src), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "good.tif" in lines[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())
