"""Plant known bugs in a scratch copy of the repository and check that the fast tests catch each one (issue 24).

    python scripts/mutants.py                 # the bugs of issue 24
    python scripts/mutants.py --all           # and the ones planted to check the tests written for it
    python scripts/mutants.py --only NAME ... # some of them (names: --list)

For every mutant, in order:
    1. copy the repository (the files git tracks, and untracked ones it does not ignore) to a new temporary folder;
    2. replace one piece of text in one file there, checked to occur exactly once (else the mutant is reported as
       not planted: the code it targets has changed, and the script needs updating);
    3. check that Python started in the copy with PYTHONPATH = the copy imports the copy's `cvdm_tf`, and the
       mutated module from it (not the editable install's);
    4. run `pytest -m "not slow" -x -q` on the mutant's test files there, with that cwd and PYTHONPATH.
A mutant is caught when pytest reports failing tests (exit code 1) and survives when they all pass (0); any other
exit code (collection error, no tests, interrupted) is an error, not a catch. Before the mutants, the same test
files run once on an unmutated copy (`--no-baseline` skips it): a catch only counts if the clean copy passes.

The editable install maps `cvdm_tf.cli` and `cvdm_tf.configs` to its own checkout's cli/ and configs/, whatever
PYTHONPATH says: the mutants' test files do not depend on them (test_through_focus's reference-phase command test
runs that CLI on the copy's package).

Exit code: 0 if every mutant was caught, 1 if any survived or errored, 2 if a mutant could not be planted or the
copy's package was not the one imported. Run it under `nice`: it runs the test files once per mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file to mutate, relative to the repository root
    old: str  # text replaced; must occur exactly once
    new: str
    tests: tuple  # test files (or node ids) run on the mutant
    issue: bool = True  # one of the bugs issue 24 names (else: a check of the tests written for it)
    why: str = ""


MUTANTS = (
    Mutant("residual-scale-multiplies", "cvdm_tf/sampler.py",
           "x = x / model.model_config.residual_scale + tf.repeat(mean, samples, axis=0)",
           "x = x * model.model_config.residual_scale + tf.repeat(mean, samples, axis=0)",
           ("tests/test_sampler.py",),
           why="the last stage multiplies the residual by residual_scale instead of dividing"),
    Mutant("eps-hat-not-recomputed", "cvdm_tf/sampler.py",
           "                eps_hat = (z - tf.sqrt(gbar) * x_hat) / tf.sqrt(tf.maximum(one_minus_gbar, 1e-12))\n",
           "                pass  # mutant: eps_hat kept after x_hat is clipped\n",
           ("tests/test_sampler.py",),
           why="eps_hat is not recomputed after x_hat is clipped"),
    Mutant("us-tie-teague-only", "cvdm_tf/physics/tie.py",
           "    regularization=1e-6,\n    iterations=10,\n    min_intensity=1e-3,\n",
           "    regularization=1e-6,\n    iterations=0,\n    min_intensity=1e-3,\n",
           ("tests/test_tie.py", "tests/test_through_focus.py"),
           why="US-TIE (tie_us_from_derivative) defaults to 0 conjugate-gradient iterations (Teague alone)"),
    Mutant("reference-phase-teague-only", "cvdm_tf/physics/through_focus.py",
           "    focus=None,\n    iterations=10,\n",
           "    focus=None,\n    iterations=0,\n",
           ("tests/test_through_focus.py",),
           why="the through-focus reference phase defaults to 0 conjugate-gradient iterations"),
    # Checks of the tests written for issue 24 (`--all`).
    Mutant("tile-offsets-ignored", "cvdm_tf/tiling.py",
           "sums[name][r:r + tile_h, c:c + tile_w] += weight(r, c) * (values + offset)",
           "sums[name][r:r + tile_h, c:c + tile_w] += weight(r, c) * values",
           ("tests/test_tiling.py",), issue=False,
           why="offset-free tiles blended without their least-squares offsets"),
    Mutant("tile-window-flat", "cvdm_tf/tiling.py",
           "            window[:overlap] = ramp\n", "            window[:overlap] = 1.0\n",
           ("tests/test_tiling.py",), issue=False,
           why="tiles are not ramped toward the neighbour that starts before them (a hard seam)"),
    Mutant("biosr-units-offset", "cvdm_tf/tasks/biosr.py",
           "return 2.0 * normalized - 1.0, low + span / 2.0, span / 2.0",
           "return 2.0 * normalized - 1.0, low + span / 2.0, span",
           ("tests/test_task_outputs.py",), issue=False,
           why="BioSR's x -> intensity scale is the whole percentile span instead of half of it"),
    Mutant("sr4x-uint16-as-uint8", "cvdm_tf/tasks/sr4x.py",
           "span = float(np.iinfo(dtype).max)", "span = 255.0",
           ("tests/test_task_outputs.py",), issue=False,
           why="4x SR writes every integer input's result on the 8-bit scale"),
    Mutant("rl-psf-on-the-camera-grid", "cvdm_tf/physics/optics.py",
           "kernel = psf(2 * half + 1, pixel_size_um_fine, na, wavelength_um)",
           "kernel = psf(2 * half + 1, 2 * pixel_size_um_fine, na, wavelength_um)",
           ("tests/test_optics.py::test_richardson_lucy_is_scikit_images_with_the_airy_psf",), issue=False,
           why="Richardson-Lucy deconvolves with a PSF sampled at the camera pitch instead of the fine grid's"),
    Mutant("biosr-score-unnormalised", "cvdm_tf/tasks/biosr.py",
           "        a, b = self.centre(estimate, truth)\n        return {\"mae\"",
           "        a, b = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)\n        return {\"mae\"",
           ("tests/test_task_outputs.py",), issue=False,
           why="BioSR scores raw intensities instead of percentile-normalised ones"),
)


def repository_files(root: Path) -> list[str]:
    """The files git tracks, plus untracked files it does not ignore (so uncommitted work is tested too)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         check=True, capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (root / name).is_file()]


def copy_repository(root: Path, files: list[str], target: Path) -> None:
    for name in files:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, destination)


def plant(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise PlantingError(f"{mutant.name}: the text to replace occurs {count} times in {mutant.path}, not once")
    path.write_text(text.replace(mutant.old, mutant.new))


class PlantingError(Exception):
    pass


def environment(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports(copy: Path, module_path: str) -> None:
    """The copy's cvdm_tf, and the module `module_path` from it, are what Python imports there."""
    module = module_path[:-len(".py")].replace("/", ".")
    probe = f"import cvdm_tf, {module} as m; print(cvdm_tf.__file__); print(m.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=environment(copy), capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise PlantingError(f"cannot import {module} in the copy:\n{out.stderr[-2000:]}")
    package, mutated = (Path(line).resolve() for line in out.stdout.split())
    for found in (package, mutated):
        if copy.resolve() not in found.parents:
            raise PlantingError(f"the copy imports {found}, not its own file (editable install first on the path?)")


def run_tests(copy: Path, tests: tuple, timeout: float) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        out = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.monotonic() - start
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else out.stderr.strip()[-300:]
    failed = [line[len("FAILED "):].split(" - ")[0] for line in lines if line.startswith("FAILED ")]
    return out.returncode, summary + (f"; failed: {', '.join(failed)}" if failed else ""), time.monotonic() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="also the mutants that check the tests of issue 24")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on an unmutated copy")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:30s} {'issue' if m.issue else 'extra'}  {m.path}: {m.why}")
        return 0
    chosen = [m for m in MUTANTS if (args.only and m.name in args.only) or (not args.only and (args.all or m.issue))]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown or not chosen:
        parser.error(f"unknown mutant(s): {', '.join(sorted(unknown))} (see --list)" if unknown else "no mutant")
    files = repository_files(ROOT)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cvdm-mutants-") as scratch:
        if not args.no_baseline:
            copy = Path(scratch) / "baseline"
            copy_repository(ROOT, files, copy)
            check_imports(copy, "cvdm_tf/sampler.py")
            for tests in sorted({m.tests for m in chosen}):
                code, summary, seconds = run_tests(copy, tests, args.timeout)
                print(f"baseline  {' '.join(tests)}: {summary} ({seconds:.0f} s)", flush=True)
                if code != 0:
                    print("the unmutated copy fails these tests: no catch would mean anything", file=sys.stderr)
                    return 1
            shutil.rmtree(copy)
        for mutant in chosen:
            copy = Path(scratch) / mutant.name
            copy_repository(ROOT, files, copy)
            try:
                plant(copy, mutant)
                check_imports(copy, mutant.path)
            except PlantingError as err:
                print(f"NOT PLANTED  {err}", file=sys.stderr)
                return 2
            code, summary, seconds = run_tests(copy, mutant.tests, args.timeout)
            verdict = {1: "caught", 0: "SURVIVED"}.get(code, f"ERROR (pytest exit code {code})")
            results[mutant.name] = verdict
            print(f"{verdict:9s} {mutant.name}: {mutant.why} [{' '.join(mutant.tests)}: {summary}, "
                  f"{seconds:.0f} s]", flush=True)
            shutil.rmtree(copy)
    caught = sum(v == "caught" for v in results.values())
    print(f"{caught} of {len(results)} mutants caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
