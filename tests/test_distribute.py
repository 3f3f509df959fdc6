"""tf.distribute: sharded data, per-example randomness, mirrored and multiworker runs that reproduce the 1-replica
run, resume across strategies, a dead worker; mixed precision.

The strategy runs are real `cvdm-tf train` processes (logical CPU devices and the multiworker cluster must be set
up before TensorFlow initialises). They are compared through metrics.csv with log_every = 1: the running mean of
one step is that step's loss. Measured: the 2-replica runs (mirrored over 2 logical CPUs, and 2 workers on
127.0.0.1) matched the 1-replica run to all 6 printed digits at every step; the only difference is the order of
the floating-point sums (gradients summed over replicas, means of means), hence a tolerance of 1e-4 relative.
A wrong wiring is far from that: a replica seeing the other's crops, per-replica t / eps, or the gradient of the
local instead of the global mean change the loss at step 2 by 1e-2 or more.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cvdm_tf.cli.main import main

HERE = Path(__file__).parent
STEPS = 6
TOML = f"""
task = "qpi"
[model]
base_filters = 4
depth = 2
tau_base_filters = 4
tau_depth = 1
time_units = 4
[train]
steps = {STEPS}
batch_size = 4
log_every = 1
checkpoint_every = 2
preview_every = 1000
validation_batches = 1
[sampler]
steps = 5
samples = 2
[data]
image_size = 16
"""
RTOL = 1e-4


def _env(**extra):
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _cli(args, log: Path, devices: int = 1, **env) -> subprocess.Popen:
    """`cvdm-tf ARGS` in a process with `devices` logical CPU devices."""
    return subprocess.Popen([sys.executable, str(HERE / "distributed_cli.py"), str(devices), *map(str, args)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(**env))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(args, root: Path, name: str, workers: int = 2):
    """`cvdm-tf train ARGS --strategy multiworker` on `workers` local processes; [(process, log path)]."""
    hosts = [f"127.0.0.1:{_free_port()}" for _ in range(workers)]
    procs = []
    for index in range(workers):
        tf_config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        log = root / f"{name}-worker{index}.log"
        tmp = root / f"{name}-tmp{index}"
        tmp.mkdir()
        procs.append((_cli(["train", *args, "--strategy", "multiworker"], log, TF_CONFIG=tf_config,
                           TMPDIR=str(tmp)), log))
    return procs


def _rows(run: Path) -> list:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_same_losses(rows, want_rows):
    assert rows and len(rows) <= len(want_rows)
    for row, want in zip(rows, want_rows):
        assert row["step"] == want["step"]
        for key in ("loss", "diffusion", "consistency", "prior", "smoothness", "val_loss"):
            assert float(row[key]) == pytest.approx(float(want[key]), rel=RTOL), (row["step"], key)


def _committed_step(run: Path):
    try:
        text = (run / "checkpoints" / "checkpoint").read_text()
    except FileNotFoundError:
        return None
    return int(text.split('model_checkpoint_path: "ckpt-')[1].split('"')[0])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("distribute")
    (root / "tiny.toml").write_text(TOML)
    return root


@pytest.fixture(scope="module")
def reference(root):
    """The 1-replica run (default strategy), trained while the first strategy run starts."""
    out = root / "reference"
    proc = _cli(["train", "--config", root / "tiny.toml", "--out", out], root / "reference.log")
    return proc, out


def _finished(reference):
    proc, out = reference
    assert proc.wait(timeout=600) == 0, (out.parent / "reference.log").read_text()[-2000:]
    return out


# === In process: the data and the randomness ===


def test_the_shards_of_a_global_batch_are_its_parts_in_replica_order():
    """Pipeline k of n (each feeding `split` replicas) takes the k-th part of every global batch: concatenated in
    replica order they are the 1-replica batches, also from a resumed start; and the crops are all different."""
    import tensorflow as tf

    from cvdm_tf.data.pipeline import InMemoryBank, make_dataset
    from cvdm_tf.tasks.qpi import QPITask

    from conftest import tiny_qpi_config

    config = tiny_qpi_config().data
    rng = np.random.default_rng(0)
    # Big enough for the default (camera) pair's field: twice the 16 px crop, at up to 0.35 / 0.21 of the pixel.
    bank = InMemoryBank([{"phase": rng.normal(size=(64, 64, 1)).astype("float32")} for _ in range(3)])
    task = QPITask(config)

    def batches(shard=(0, 1), split=1, count=2):
        dataset = make_dataset(task, bank, 16, 8, 3, start=16, augment=True, example_seeds=True, shard=shard,
                               split=split)
        return [[part.numpy() for part in batch] for batch in dataset.take(count)]

    whole = batches()
    for n, split in ((2, 1), (1, 2), (2, 2), (4, 1)):
        replicas = [batches((k, n), split, count=2 * split) for k in range(n)]  # pipeline k: its split batches
        for step in range(2):
            parts = [pipeline[step * split + r] for pipeline in replicas for r in range(split)]
            for item in range(3):  # y, x, seeds
                np.testing.assert_array_equal(np.concatenate([p[item] for p in parts]), whole[step][item])
    for y, x, seeds in whole:
        assert len({x[i].tobytes() for i in range(len(x))}) == len(x)
        assert len({tuple(s) for s in seeds}) == len(seeds)
    assert tf.is_tensor(tf.constant(whole[0][2])) and whole[0][2].shape == (8, 2)


def test_t_and_eps_of_an_example_are_its_own_and_have_the_right_law():
    """draw_noise with seeds: the draws of an example do not depend on the batch it is in (so a replica draws what
    one replica would), they are tf.random.stateless draws of its key (an independent call), t ~ U[0, 1) and
    eps ~ N(0, 1)."""
    import tensorflow as tf

    from cvdm_tf.model import CVDM

    model = CVDM({"base_filters": 4, "depth": 1, "tau_base_filters": 4, "tau_depth": 1, "time_units": 4})
    seeds = tf.constant(np.random.default_rng(1).integers(0, 2**40, size=(512, 2)), tf.int64)
    x0 = tf.zeros([512, 8, 8, 1])
    t, eps = model.draw_noise(x0, seeds)
    t_half, eps_half = model.draw_noise(x0[256:], seeds[256:])
    np.testing.assert_array_equal(t[256:], t_half)
    np.testing.assert_array_equal(eps[256:], eps_half)
    key = tf.random.experimental.stateless_fold_in(seeds[7], 0)
    np.testing.assert_array_equal(t[7], tf.random.stateless_uniform([1], seed=key))
    assert t.shape == (512, 1) and eps.shape == (512, 8, 8, 1)
    t = t.numpy().ravel()
    assert 0 <= t.min() and t.max() < 1
    # Kolmogorov-Smirnov distance to U[0, 1): 1.63 / sqrt(n) is the 1% critical value.
    assert np.max(np.abs(np.sort(t) - np.arange(1, 513) / 512)) < 1.63 / np.sqrt(512)
    e = eps.numpy().ravel()
    assert abs(e.mean()) < 4 / np.sqrt(e.size) and abs(e.std() - 1) < 0.01


def test_multiworker_without_tf_config_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["train", "--strategy", "multiworker", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "TF_CONFIG is not set" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_a_batch_that_does_not_split_over_the_replicas_is_a_user_error():
    from types import SimpleNamespace

    from cvdm_tf.distribute import check_batch
    from cvdm_tf.errors import InputError

    with pytest.raises(InputError, match="train.batch_size: 6 does not split over 4 replicas"):
        check_batch(SimpleNamespace(num_replicas_in_sync=4), 6)
    check_batch(SimpleNamespace(num_replicas_in_sync=4), 8)


# === Mixed precision ===


def _three_steps(precision: str) -> dict:
    """The loss terms after three steps from the same weights and batches, U-Nets in `precision`."""
    import keras
    import tensorflow as tf

    from conftest import tiny_qpi_config
    from cvdm_tf.model import build_model, make_optimizer
    from cvdm_tf.runs import resolve_config

    config = resolve_config(tiny_qpi_config(train={"precision": precision, "learning_rate": 1e-3}))
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 16, 16, config.model.condition_channels)).astype("float32")
    x = np.tanh(y[..., :1]).astype("float32")
    seeds = rng.integers(0, 2**31, size=(4, 2))
    keras.utils.set_random_seed(0)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config.train))
    assert model.denoiser.compute_dtype == precision.replace("mixed_", "")
    step = tf.function(model.train_step)
    for _ in range(3):
        out = step((y, x, seeds))
    return {k: float(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def float32_steps():
    return _three_steps("float32")


@pytest.mark.parametrize("precision, tolerance", [("mixed_float16", 0.02), ("mixed_bfloat16", 0.05)])
def test_mixed_precision_steps_stay_finite_and_close_to_float32(precision, tolerance, float32_steps):
    """Three steps from the same weights and batches: every loss term finite and within `tolerance` (relative) of
    float32 (float16 has 11 significant bits, bfloat16 8; the schedule terms are float32 in both)."""
    import keras

    logs = {"float32": float32_steps, precision: _three_steps(precision)}
    assert keras.config.dtype_policy().name == "float32"  # the policy was only for the U-Nets
    for name, value in logs[precision].items():
        assert np.isfinite(value), name
        assert value == pytest.approx(logs["float32"][name], rel=tolerance, abs=1e-6), name


# === Strategies, in processes of their own ===


@pytest.mark.slow
def test_mirrored_over_two_devices_reproduces_one_replica(root, reference):
    out = root / "mirrored"
    proc = _cli(["train", "--config", root / "tiny.toml", "--out", out, "--strategy", "mirrored"],
                root / "mirrored.log", devices=2)
    assert proc.wait(timeout=600) == 0, (root / "mirrored.log").read_text()[-2000:]
    _assert_same_losses(_rows(out), _rows(_finished(reference)))
    assert len(_rows(out)) == STEPS


@pytest.mark.slow
def test_mirrored_replicas_get_different_crops_that_make_up_the_global_batch(root):
    """The distributed dataset itself, over 2 logical CPUs: the two replicas' crops of a step are all different and
    together are the 1-replica batch."""
    code = """
import json, sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from conftest import tiny_qpi_config
from cvdm_tf.data.pipeline import make_dataset
from cvdm_tf.distribute import distribute_dataset, make_strategy
from cvdm_tf.tasks import make_task
config = tiny_qpi_config()
task = make_task("qpi", config.data)
bank, _, _ = task.training_banks(0.1, 0, 16)
make = lambda shard, split: make_dataset(task, bank, 16, 4, 0, example_seeds=True, shard=shard, split=split)
strategy = make_strategy("mirrored")
step = next(iter(distribute_dataset(strategy, make)))
replicas = [v.numpy() for v in strategy.experimental_local_results(step[1])]
whole = next(iter(make((0, 1), 1)))[1].numpy()
print(json.dumps({"replicas": len(replicas), "crops": [r.tolist() for r in replicas], "whole": whole.tolist()}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                            cwd=HERE, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    crops = [np.asarray(c) for c in out["crops"]]
    assert [len(c) for c in crops] == [2, 2]
    every = np.concatenate(crops)
    assert len({c.tobytes() for c in every}) == 4
    np.testing.assert_array_equal(every, np.asarray(out["whole"], np.float32))


@pytest.fixture(scope="module")
def cluster(root):
    """2 workers on 127.0.0.1 train the 6 steps."""
    out = root / "cluster"
    procs = _cluster(["--config", root / "tiny.toml", "--out", out], root, "cluster")
    codes = [proc.wait(timeout=600) for proc, _ in procs]
    return out, codes, [log.read_text() for _, log in procs]


@pytest.mark.slow
def test_two_workers_reproduce_one_replica_and_only_the_chief_writes(root, reference, cluster):
    out, codes, logs = cluster
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    _assert_same_losses(_rows(out), _rows(_finished(reference)))
    assert [row["step"] for row in _rows(out)] == [str(s) for s in range(1, STEPS + 1)]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.toml", "logs", "metrics.csv", "previews"]
    assert len(list((out / "logs").iterdir())) == 1  # one TensorBoard event file: the chief's
    assert logs[0].strip().splitlines()[-1] == f"done: {STEPS} steps, run folder {out}"
    assert "training qpi" not in logs[1]  # the other worker says nothing...
    assert not any((root / "cluster-tmp1").iterdir())  # ...and its temporary checkpoints are gone


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_with_a_message_and_one_process_resumes_it(root, reference):
    """Worker 1 of 2 is SIGKILLed after the first checkpoint: the chief stops with the message (not a hang), and
    `--resume` by a single process (default strategy) continues from the chief's checkpoint and ends with the
    1-replica run's losses."""
    out = root / "killed"
    (root / "long.toml").write_text(TOML.replace(f"steps = {STEPS}", "steps = 1000", 1))
    procs = _cluster(["--config", root / "long.toml", "--out", out, "--worker-timeout", 5], root, "killed")
    (chief, chief_log), (worker, _) = procs
    deadline = time.monotonic() + 600
    while (_committed_step(out) or 0) < 2:
        assert chief.poll() is None and worker.poll() is None, chief_log.read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.kill()
    killed = time.monotonic()
    assert chief.wait(timeout=120) == 1  # not a hang
    print(f"the chief stopped {time.monotonic() - killed:.1f} s after the worker was killed")
    worker.wait()
    message = chief_log.read_text().strip().splitlines()[-1]
    assert message.startswith("error: lost a worker of the cluster at step "), message
    assert f"restart every worker with: cvdm-tf train --resume --out {out} --strategy multiworker" in message
    saved = _committed_step(out)
    assert f"the last checkpoint is step {saved};" in message
    proc = _cli(["train", "--resume", "--out", out, "--steps", STEPS], root / "killed-resumed.log")
    assert proc.wait(timeout=600) == 0, (root / "killed-resumed.log").read_text()[-2000:]
    assert f"steps {saved} -> {STEPS}" in (root / "killed-resumed.log").read_text()
    rows = _rows(out)
    assert [row["step"] for row in rows] == [str(s) for s in range(1, STEPS + 1)]
    _assert_same_losses(rows, _rows(_finished(reference)))
