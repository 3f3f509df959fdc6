"""Peak memory of training from a large folder of pairs: the file-backed tf.data pipeline keeps RSS flat.

    python benchmarks/file_pipeline_rss.py [--pairs 10000] [--size 128] [--steps 200] [--folder /tmp/pairs]

Writes `--pairs` widefield / SIM pairs (`wf/NAME.tif` uint16 [size/2, size/2], `gt/NAME.tif` uint16
[size, size]) once, then runs `cvdm-tf train --task biosr --data FOLDER --steps N` in a child process for 2
sizes of the folder (a tenth of it, and all of it) and prints the child's peak RSS for each (getrusage of the
children: the whole process, TensorFlow included). Flat RSS = the peak does not grow with the folder.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def write_pairs(folder: Path, count: int, size: int):
    rng = np.random.default_rng(0)
    for sub in ("wf", "gt"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"p{index:05d}.tif"
        if (folder / "gt" / name).exists():
            continue
        target = rng.integers(0, 4000, (size, size), dtype=np.uint16)
        wide = target.reshape(size // 2, 2, size // 2, 2).sum(axis=(1, 3)).astype(np.uint16) // 4
        tifffile.imwrite(folder / "wf" / name, wide)
        tifffile.imwrite(folder / "gt" / name, target)


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of a child process run to the end."""
    began = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest child's: runs go from small to large, so `after` is this one's.
    return max(after, before) / 1024, time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--folder", help="where the pairs are written (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = Path(args.folder or tempfile.mkdtemp(prefix="cvdm-pairs-"))
    rows = []
    for count in (args.pairs // 10, args.pairs):
        folder = root / f"pairs{count}"
        began = time.perf_counter()
        write_pairs(folder, count, args.size)
        written = time.perf_counter() - began
        with tempfile.TemporaryDirectory() as run:
            rss, wall = peak_rss_of(["cvdm-tf", "train", "--task", "biosr", "--data", str(folder), "--steps",
                                     str(args.steps), "--out", str(Path(run) / "run")])
        size_mb = sum(p.stat().st_size for p in folder.rglob("*.tif")) / 2**20
        rows.append((count, size_mb, rss, wall, written))
    print(f"\n`cvdm-tf train --task biosr --data FOLDER --steps {args.steps}` (default config, {args.size} px SIM "
          f"pairs)\n\n| pairs | folder (MiB) | peak RSS (MiB) | wall (s) |\n|---|---|---|---|")
    for count, size_mb, rss, wall, _ in rows:
        print(f"| {count} | {size_mb:.0f} | {rss:.0f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
