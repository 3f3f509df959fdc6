"""Built-in models: trained by the project's own default commands and shipped inside the package, so that
`cvdm-tf infer --model builtin:qpi --input ...` works right after `pip install`, offline, with no training.

Each model is a folder `cvdm_tf/builtin/NAME/`:

    config.toml            the run's resolved config (rebuilds the model)
    model.weights.h5       the run's EMA weights only (no optimizer state): what `load_run` would sample with
    card.toml              how it was made (command, commit, training data, cost) and what it scores: the task's
                           held-out benchmark, and a small `check` the tests re-score
    heldout/               the small held-out set of that check (never seen in training), readable by `cvdm-tf eval`

`scripts/builtin_models.py` regenerates a folder from a run folder of the default training command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cvdm_tf.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREFIX = "builtin:"
ROOT = Path(__file__).parent
WEIGHTS = "model.weights.h5"


def is_builtin(spec) -> bool:
    """Whether a `--model` value names a built-in model (`builtin:NAME`) rather than a run folder."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def names() -> list[str]:
    """The built-in models shipped with this install."""
    return sorted(path.parent.name for path in ROOT.glob(f"*/{WEIGHTS}"))


def folder(spec) -> Path:
    """The folder of `builtin:NAME` (or NAME); an InputError naming the known models if there is none."""
    name = spec[len(PREFIX):] if is_builtin(spec) else spec
    path = ROOT / name
    if not name or name not in names():
        raise InputError(f"{PREFIX}{name}: no such built-in model (built in: "
                         f"{', '.join(PREFIX + n for n in names()) or 'none'})")
    return path


def card(spec) -> dict:
    """The model card of a built-in model (card.toml as a dict)."""
    with open(folder(spec) / "card.toml", "rb") as handle:
        return tomllib.load(handle)


def heldout(spec) -> Path:
    """The small held-out set of a built-in model's card check (a folder `cvdm-tf eval --data` reads)."""
    return folder(spec) / "heldout"


def sample_measurement(spec):
    """(task, raw measurement [h, w, C]) of the first case of a built-in model's held-out set, made as its card's
    check makes it (no weights loaded): something to try a model on (napari's sample data, the example)."""
    from cvdm_tf.config import load_config
    from cvdm_tf.tasks import make_task

    config = load_config(folder(spec) / "config.toml")
    task = check_task(spec, make_task(config.task, config.data))
    noise = getattr(config.data, "noise", "none")  # sr4x has no noise model
    cases = task.eval_cases(heldout(spec), noise, card(spec)["check"]["seed"])
    return task, np.asarray(cases[0].measurement, np.float32)


def load(spec):
    """(config, task, model) of a built-in model, like `runs.load_run` gives for a run folder."""
    return load_folder(folder(spec))


def load_folder(path: Path):
    """(config, task, model) of a folder that `save` wrote: config.toml and the weights to sample with (a built-in
    model, or a run of `cvdm-tf distil`)."""
    from cvdm_tf.config import load_config
    from cvdm_tf.model import build_model
    from cvdm_tf.tasks import make_task

    config = load_config(path / "config.toml")
    model = build_model(config)
    model.load_weights(path / WEIGHTS)
    return config, make_task(config.task, config.data), model


def save(config, model, out_dir) -> Path:
    """Write `config.toml` and the weights of `model` (already holding the weights to ship: the EMA ones) into
    `out_dir`. The weights go through a fresh, uncompiled model, so no optimizer state is saved (a quarter of
    the size of a checkpoint)."""
    from cvdm_tf import io
    from cvdm_tf.config import dump_config
    from cvdm_tf.model import build_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh = build_model(config)
    fresh.set_weights(model.get_weights())
    fresh.save_weights(str(out_dir / WEIGHTS))  # Keras picks the format by the whole `.weights.h5` suffix
    io.write_text(out_dir / "config.toml", dump_config(config))
    return out_dir


def check_task(spec, task):
    """The task as the card's check evaluates with it: the run's, with the check's data options (the card's
    `check.data`, e.g. QPI's camera_crop, as `cvdm-tf eval --camera-crop` sets it)."""
    options = card(spec)["check"].get("data", {})
    if not options:
        return task
    import dataclasses

    from cvdm_tf.tasks import make_task

    return make_task(task.name, dataclasses.replace(task.data, **options))


def _recalibration_lines(spec) -> list[str]:
    from cvdm_tf import recalibration

    fits = recalibration.load(folder(spec))
    if not fits:
        return []
    return ["  std map:       also written recalibrated (NAME_std_recalibrated) at "
            + "; ".join(fit.setting() for fit in fits), f"                 fitted on {fits[0].data}"]


def describe(spec) -> str:
    """A short text card for `cvdm-tf models`."""
    c = card(spec)
    check = c["check"]
    flags = "".join(f" --{key.replace('_', '-')} {value}" for key, value in check.get("data", {}).items())
    lines = [f"{PREFIX}{c['name']}  ({c['task']}) {c['title']}",
             f"  trained by:    {c['trained_with']}  (commit {c['commit']}; {c['training_cost']})",
             f"  training data: {c['training_data']}",
             *([f"  physics:       {c['physics_range']} (a measurement outside is refused)"]
               if "physics_range" in c else []),
             f"  parameters:    {c['parameters']:,}",
             f"  sampler:       {c['sampler']}",
             *_recalibration_lines(spec),
             f"  benchmark:     {c['benchmark']['result']}",
             f"                 on {c['benchmark']['set']}",
             f"                 `{c['benchmark']['command']}`",
             "  check:         " + ", ".join(f"{method} {check['metric']} {value:.4f}"
                                             for method, value in check["scores"].items())
             + f" on {check['set']}",
             f"                 `cvdm-tf eval --model {PREFIX}{c['name']} --data {heldout(spec)} "
             f"--samples {check['samples']} --seed {check['seed']} --baseline {check['baseline']}{flags}`"]
    return "\n".join(lines)
