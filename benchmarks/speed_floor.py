"""The floor of sampling: what one denoiser pass costs, what each built-in model's card sampler costs, how many
passes that is, and how close a pass comes to what these cores can compute (issue 25).

    python benchmarks/speed_floor.py [--model builtin:qpi --model builtin:biosr --model builtin:sr4x] \
        [--size 1024] [--repeats 3] [--json floor.json]

For each model, at an output field of `--size` x `--size` px (a held-out measurement of the model's, mirrored
out to the input size the task needs: QPI 1024 px, BioSR 512 px of widefield, sr4x 256 px):
- one pass: the denoiser (the U-Net the sampler calls T x K times) on the whole field, batch 1, in the sampler's
  precision (`sampler.precision`, "auto" = bfloat16 on CPUs with native bfloat16): min / median wall of
  `--repeats`, and its floating-point operations as TensorFlow's graph profiler counts them (multiply-adds
  count 2), hence GFLOP/s;
- once per field: tau(y) of the schedule network and the mean network (where the model has one);
- the card: `cvdm-tf infer`'s path (`inference.reconstruct`, default tiles of 256 px) with the card's K, T and
  sampler, one timed run after a warm-up that traces the graphs; its wall and CPU seconds, the nominal passes
  K x T, and the effective passes: card wall / one pass. Effective over nominal above 1 is what is paid beyond
  the passes (tile overlap, the update arithmetic, QPI's data-consistency step);
- the reference: a 2048 x 2048 matrix product (tf.linalg.matmul) in float32 and in bfloat16 on the same cores,
  the most these kernels get out of the machine, GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvdm_tf import builtin  # noqa: E402
from cvdm_tf.inference import reconstruct  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import resolve_precision, sampler_for  # noqa: E402

MODELS = ("builtin:qpi", "builtin:biosr", "builtin:sr4x")


def walls(function, repeats):
    function()  # tracing, first allocation
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times), statistics.median(times)


def graph_flops(concrete_function) -> float:
    """Floating-point operations of one call, as TensorFlow's graph profiler counts them (2 per multiply-add)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    options = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    options = options.with_empty_output().build()
    return float(model_analyzer.profile(concrete_function.graph, options=options).total_float_ops)


def matmul_gflops(dtype, repeats, n=2048):
    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda: tf.linalg.matmul(a, a))
    best, _ = walls(lambda: product().numpy(), repeats)
    return 2.0 * n**3 / best / 1e9


def field_measurement(spec, task, size):
    """A held-out measurement of the model's, mirrored out to the input of a `size` px output field."""
    _, raw = builtin.sample_measurement(spec)
    side = size // task.scale
    while raw.shape[0] < side or raw.shape[1] < side:
        raw = np.concatenate([raw, raw[::-1]], axis=0)
        raw = np.concatenate([raw, raw[:, ::-1]], axis=1)
    return raw[:side, :side]


def floor(spec, size, repeats):
    config, task, model = load_run(spec)
    c = config.model
    sampler = sampler_for(model, config.sampler)
    precision = resolve_precision(config.sampler.precision)
    z = tf.random.normal([1, size, size, c.target_channels])
    y = tf.random.normal([1, size, size, c.condition_channels])
    gbar = tf.fill([1, size, size, c.target_channels], 0.5)

    with sampler._denoiser_precision():
        one_pass = tf.function(lambda: model((z, y, gbar)))
        flops = graph_flops(one_pass.get_concrete_function())
        pass_min, pass_median = walls(lambda: one_pass().numpy(), repeats)
    per_field = tf.function(lambda: [v for v in (model.schedule.tau(y), model.prior_mean(y)) if v is not None])
    field_min, _ = walls(lambda: [v.numpy() for v in per_field()], repeats)

    raw = field_measurement(spec, task, size)
    card = dict(samples=config.sampler.samples, steps=config.sampler.steps, method=config.sampler.method)
    reconstruct(model, task, raw[:64, :64], sampler=sampler, **card)  # trace the sampler (any size after)
    wall, cpu = time.perf_counter(), time.process_time()
    out = reconstruct(model, task, raw, sampler=sampler, **card)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out["mean"].shape[:2] == (size, size), out["mean"].shape
    nominal = card["samples"] * card["steps"]
    return {"model": spec, "task": config.task, "input": f"{raw.shape[0]} x {raw.shape[1]}", "precision": precision,
            "pass_min_s": pass_min, "pass_median_s": pass_median, "gflop_per_pass": flops / 1e9,
            "gflops": flops / pass_min / 1e9, "per_field_s": field_min,
            "card": f"{card['method']} K = {card['samples']} x T = {card['steps']}" + (
                ", antithetic" if config.sampler.antithetic else ""),
            "nominal_passes": nominal, "card_wall_s": wall, "card_cpu_s": cpu,
            "effective_passes": wall / pass_min}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="built-in model or run folder (repeatable; default: all "
                        "three built-in models)")
    parser.add_argument("--size", type=int, default=1024, help="output field side, px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)

    threads = os.cpu_count()
    reference = {name: matmul_gflops(dtype, args.repeats) for name, dtype in
                 (("float32", tf.float32), ("bfloat16", tf.bfloat16))}
    rows = [floor(spec, args.size, args.repeats) for spec in args.model or MODELS]
    lines = [f"`python benchmarks/speed_floor.py {' '.join(argv or sys.argv[1:])}` ({platform.processor() or 'CPU'}"
             f", {threads} cores, TensorFlow {tf.__version__}); output field {args.size} x {args.size} px\n",
             "| model | input | precision | one pass (s, min / median) | GFLOP per pass | GFLOP/s | tau and mean "
             "nets (s) | card sampler | passes K x T | card wall (s) | card CPU (s) | effective passes |",
             "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['precision']} | {r['pass_min_s']:.2f} / "
                     f"{r['pass_median_s']:.2f} | {r['gflop_per_pass']:.0f} | {r['gflops']:.0f} | "
                     f"{r['per_field_s']:.2f} | {r['card']} | {r['nominal_passes']} | {r['card_wall_s']:.1f} | "
                     f"{r['card_cpu_s']:.1f} | {r['effective_passes']:.0f} |")
    lines.append(f"\n2048 x 2048 matrix product on the same cores: float32 {reference['float32']:.0f} GFLOP/s, "
                 f"bfloat16 {reference['bfloat16']:.0f} GFLOP/s.")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"reference_gflops": reference, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
