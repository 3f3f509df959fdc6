"""Config: TOML <-> frozen dataclasses; errors name the key; the shipped config spells out every key."""

import dataclasses
import sys
import typing
from pathlib import Path

import pytest

from cvdm_tf.config import Config, default_config, dump_config, from_dict, load_config
from cvdm_tf.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QPI_TOML = CONFIGS / "qpi.toml"
TASKS = ("qpi", "biosr", "sr4x")


def _sections():
    return {f.name: f.type for f in dataclasses.fields(Config) if f.name != "task"}


def _error(data) -> str:
    with pytest.raises(InputError) as info:
        from_dict(data, source="cfg.toml")
    return str(info.value)


def test_default_config_loads_and_is_the_shipped_file():
    config = default_config("qpi")
    assert config.task == "qpi"
    assert config == load_config(QPI_TOML)


def test_dump_then_load_gives_the_same_config(tmp_path):
    for config in (Config(), default_config("qpi"),
                   default_config("qpi").replace(data={"source": 'C:\\data\\"cells"'}, train={"learning_rate": 3e-5})):
        path = tmp_path / "config.toml"
        path.write_text(dump_config(config))
        assert load_config(path) == config


@pytest.mark.parametrize("task", TASKS)
def test_the_shipped_config_has_every_key(task):
    """No silent defaults: every dataclass field is spelled out in configs/TASK.toml, and nothing else."""
    from cvdm_tf.tasks import data_config_class

    data = tomllib.loads((CONFIGS / f"{task}.toml").read_text())
    assert data["task"] == task
    hints = {**typing.get_type_hints(Config), "data": data_config_class(task)}
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    for name in _sections():
        assert set(data[name]) == {f.name for f in dataclasses.fields(hints[name])}, name


@pytest.mark.parametrize("task", TASKS)
def test_shipped_channels_agree_with_the_task(task):
    from cvdm_tf.runs import resolve_config

    config = default_config(task)
    assert resolve_config(config) == config


def test_a_data_key_of_another_task_is_rejected():
    message = _error({"task": "biosr", "data": {"defocus_um": 1.0}})
    assert "unknown key 'data.defocus_um'" in message


@pytest.mark.parametrize("data, fragments", [
    ({"model": {"shedule": "linear"}}, ["cfg.toml", "unknown key 'model.shedule'", "schedule"]),
    ({"trian": {}}, ["unknown key 'trian'"]),
    ({"train": {"steps": "10"}}, ["key 'train.steps' must be int, got str '10'"]),
    ({"train": {"steps": 10.0}}, ["key 'train.steps' must be int, got float"]),
    ({"train": {"steps": True}}, ["key 'train.steps' must be int, got bool True"]),
    ({"train": {"learning_rate": False}}, ["key 'train.learning_rate' must be float, got bool"]),
    ({"data": {"augment": 1}}, ["key 'data.augment' must be bool, got int 1"]),
    ({"data": {"source": 3}}, ["key 'data.source' must be str"]),
    ({"model": {"schedule": "quadratic"}}, ["model.schedule: 'quadratic' is not one of learned"]),
    ({"sampler": {"method": "euler"}}, ["sampler.method: 'euler' is not one of ddpm, ddim"]),
    ({"data": {"noise": "speckle"}}, ["data.noise: 'speckle'"]),
    ({"task": "sr"}, ["task: 'sr' is not one of qpi"]),
    ({"model": 3}, ["[model] must be a table"]),
    ({"train": {"steps": 0}}, ["train.steps: must be > 0, got 0"]),
    ({"train": {"validation_fraction": 1.0}}, ["train.validation_fraction: must be in [0, 1)"]),
    ({"train": {"learning_rate": float("nan")}}, ["train.learning_rate: must be > 0, got nan"]),
    ({"data": {"noise_max": -0.1}}, ["data.noise_max: must be >= 0"]),
    ({"loss": {"w": -1}}, ["loss.w: must be >= 0"]),
    ({"train": {"seed": -1}}, ["train.seed: must be in [0, 2**31)"]),
    ({"data": {"image_size": 30}}, ["data.image_size: 30 is not a multiple of 8", "use e.g. 24 or 32"]),
    ({"sampler": {"estimate": "mode"}}, ["sampler.estimate: 'mode' is not one of mean, median, mean_network"]),
    ({"sampler": {"estimate": "mean_network"}}, ["sampler.estimate = \"mean_network\" needs a mean network",
                                                 "got model.mean = 'none'"]),
    ({"model": {"kind": "regression", "mean": "condition+network"}, "sampler": {"estimate": "mean_network"}},
     ["sampler.estimate = \"mean_network\": a regression (model.kind) has no mean network"]),
])
def test_errors_name_the_key(data, fragments):
    message = _error(data)
    assert message.startswith("cfg.toml: ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_an_int_is_accepted_for_a_float():
    config = from_dict({"train": {"learning_rate": 1}})
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="none.toml: config file not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = \n")
    with pytest.raises(InputError, match=r"bad.toml: not valid TOML \(.*line 2"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="binary.toml: cannot read config"):
        load_config(binary)


def test_unknown_task_for_default_config():
    with pytest.raises(InputError, match="unknown task 'foo'"):
        default_config("foo")


def test_configs_are_frozen():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.steps = 3  # type: ignore[misc]
