"""Choose the frame weight of the TIE channel (`data.tie_frame`, cvdm_tf.physics.tie.frame_regularization).

    python scripts/frame_weight.py [--sizes 64 128] [--strengths 0 0.1 0.25 0.5 1 2] [--seed 777]

Camera frames of S px (the centres of fields of 2S px: 8 cell-phantom fields drawn with seed 777, neither the
training nor the test phantoms, at the default microscope), noise-free and with the paper's noise; zero-padded TIE
at each pair's noise-adaptive weight plus strength * (2 pi / S)^4. Prints the offset-free MAE (rad) per frame size,
noise and strength: the strength the default config uses is the one that stays near the best at every size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvdm_tf.metrics import mae, offset_free  # noqa: E402
from cvdm_tf.physics.tie import frame_regularization, tie_padded  # noqa: E402
from cvdm_tf.tasks.qpi import DataConfig, QPITask, camera_fields  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 0.1, 0.25, 0.5, 1, 2])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args(argv)
    print("| frame (px) | noise | " + " | ".join(f"strength {s:g}" for s in args.strengths) + " |")
    print("|---" * (2 + len(args.strengths)) + "|")
    for size in args.sizes:
        task = QPITask(dataclasses.replace(DataConfig(), camera_crop=size))
        m = task.microscope
        fields = camera_fields(args.images, 2 * size, m.pixel_size_um, args.seed, task.data.phase_max, natural=())
        for noise in ("none", "paper"):
            cases = [task.simulate_case(name, phase, noise, (args.seed, i)) for i, (name, phase) in enumerate(fields)]
            pairs = tf.constant(np.stack([case.measurement for case in cases]))
            weight = task.noise_weight(pairs)
            errors = []
            for strength in args.strengths:
                total = weight + frame_regularization(size, size, strength)
                phases = tie_padded(pairs, m.defocus_um, m.wavelength_um, m.pixel_size_um, total).numpy()
                errors.append(np.mean([mae(*offset_free(p.astype(np.float64), c.truth.astype(np.float64)))
                                       for p, c in zip(phases, cases)]))
            print(f"| {size} | {noise} | " + " | ".join(f"{e:.4f}" for e in errors) + " |")


if __name__ == "__main__":
    main()
