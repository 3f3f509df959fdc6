"""A run's model against its own TIE input channel on crops of its held-out (validation) training images.

    python benchmarks/heldout_natural.py RUN [SIZE] [ddpm|ddim] [paper|none|...]

Takes the run's validation images (split by image, never trained on), 4 random crops of SIZE px from each (numpy
seed 0), simulates them with the run's physics and noise (or the noise model named last), and prints the
offset-free MAE (rad) of the TIE channel the model sees, of the model (4 samples, the run's steps; with the run's
data consistency, and without), and of predicting zero. Compare with
benchmarks/qpi_vs_tie.py, which tests on cell phantoms instead: the gap between the two is the distribution shift.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvdm_tf.data import sources  # noqa: E402
from cvdm_tf.tasks.qpi import load_ground_truth  # noqa: E402
from cvdm_tf.metrics import mae, offset_free  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import sampler_for  # noqa: E402


def main(run, size=64, method="ddpm", noise=None):
    config, task, model = load_run(run)
    images = load_ground_truth(config.data, size)
    _, validation = sources.split_by_image(images, config.train.validation_fraction, config.train.seed)
    print("validation images:", ", ".join(name for name, _ in validation))
    rng = np.random.default_rng(0)
    truths = []
    for _, image in validation:
        for _ in range(4):
            top = rng.integers(0, image.shape[0] - size + 1)
            left = rng.integers(0, image.shape[1] - size + 1)
            truths.append(image[top:top + size, left:left + size])
    measured = tf.stack([task.add_noise(task.measure(tf.constant(p)), tf.constant([7, i], tf.int64), noise=noise)
                         for i, p in enumerate(truths)])
    y = task.normalize_condition(measured)
    out = sampler_for(model, config.sampler)(y, steps=config.sampler.steps, samples=4, seed=0, method=method)
    estimate = task.denormalize_target(out["mean"]).numpy()[..., 0]

    def score(values):
        return np.mean([mae(*offset_free(a, b)) for a, b in zip(values, truths)])

    print(f"offset-free MAE (rad): model {score(estimate):.4f}", end="")
    if task.refines:
        drawn = task.denormalize_target(out["samples"]).numpy()
        refined = np.asarray(task.refine(drawn, measured))
        print(f", model + data consistency {score(refined.mean(axis=1)[..., 0]):.4f}", end="")
    if config.data.tie_channel:
        print(f", TIE channel {score(task.denormalize_target(y[..., -1:]).numpy()[..., 0]):.4f}", end="")
    print(f", zero {score(np.zeros_like(estimate)):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if a.isdigit() else a for a in sys.argv[2:]))
