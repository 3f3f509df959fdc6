"""Configuration: TOML files -> frozen dataclasses that reject unknown keys and wrong types.

A config has one table per concern. The resolved config is written to every run folder as `config.toml` and is
enough to rebuild the model (`load_config(run / "config.toml")`).

    task = "qpi"
    [model]    the networks and the schedule kind
    [loss]     the weights of the regularised loss (cvdm-math.md section 3)
    [train]    optimiser, steps, logging and checkpoints
    [sampler]  T steps, K samples, ancestral (ddpm) or deterministic (ddim) updates
    [data]     the task's own table: physics, image source, crop size, noise model (the task's DataConfig,
               cvdm_tf/tasks/)
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cvdm_tf.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEDULES = ("learned", "learned-global", "linear", "cosine")
SAMPLERS = ("ddpm", "ddim")
NORMS = ("none", "instance", "group")
MEANS = ("none", "network", "condition", "condition+network")
# A run's point estimate of x given y: the mean of the K samples (E[x|y], least squared error), their per-pixel
# median (least absolute error), or the mean network's own E[x|y] (no samples; models with a mean network).
ESTIMATES = ("mean", "median", "mean_network")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DENOISERS = ("unet", "sr3")


@dataclass(frozen=True)
class ModelConfig:
    """The networks. Channel counts come from the task (QPI: condition 2 = the intensity pair, target 1 = phase)."""

    condition_channels: int = 2
    target_channels: int = 1
    # "cvdm", or "regression": the denoiser's backbone trained with L1 (the CARE / DFCAN-like baseline).
    kind: str = "cvdm"
    schedule: str = "learned"
    # Denoiser eps_hat(z_t, y, gamma): "unet" (networks.unet, gamma as an input channel) or "sr3" (cvdm_tf.sr3:
    # GroupNorm residual blocks, a per-pixel noise-level embedding in every block, self-attention at the lowest
    # resolution; group normalisation always, `norm` is not used). Also the regression / mean network backbone.
    denoiser: str = "unet"
    # Denoiser U-Net eps_hat(z_t, y, gamma).
    base_filters: int = 16
    depth: int = 3
    kernel_size: int = 3
    blocks_per_level: int = 1
    norm: str = "group"
    # Schedule networks: tau(y) U-Net (learned kind only) and the monotone time networks rho(t), lambda(t).
    tau_base_filters: int = 8
    tau_depth: int = 2
    time_units: int = 16
    # Fixed schedules (CDDPM baseline): continuous-time linear beta(t) and cosine (Nichol & Dhariwal 2021).
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_offset: float = 0.008
    # What the diffusion models: x itself ("none"), or the residual (x - mean) * residual_scale around a mean
    # from a network trained to predict E[x | y] ("network": the reference's zero-mean diffusion) or from the last
    # condition channel ("condition": e.g. the classical TIE estimate, so that doing nothing is already TIE), or
    # that estimate corrected by a mean network ("condition+network": the regression baseline's form, CorrDiff's
    # regression + residual diffusion; the network learns the correction, not the identity).
    mean: str = "none"
    # The mean network's loss: "l2" (it estimates E[x | y]) or "l1" (the median, as the regression baseline).
    mean_loss: str = "l2"
    residual_scale: float = 1.0
    # The diffusion's target lies in [-x_range, x_range] (offset-free QPI phase: about [-2, 2]; a residual times
    # residual_scale: wider); the sampler clips its x_hat estimate there. 0 disables the clip.
    x_range: float = 1.0
    # The target itself lies in [-target_range, target_range] (BioSR: percentile-normalised, clipped to [-1, 1]):
    # each sample is clipped there after the mean is added back. 0 = no such bound (QPI's phase has none).
    target_range: float = 0.0
    # The learned schedule's free scale (tau, rho, lambda) -> (c tau, rho / c, lambda / c): "free" (the paper's),
    # or "unit": rho(1) = 1, so tau(y) is the schedule magnitude tau * rho(1) itself.
    gauge: str = "free"

    @property
    def mean_network_estimate(self) -> str:
        """What the mean network estimates, as labels name it: E[x|y] (L2 loss) or the posterior median (L1)."""
        return "E[x|y]" if self.mean_loss == "l2" else "median of x|y"

    def __post_init__(self):
        check_choice("model.kind", self.kind, ("cvdm", "regression"))
        check_choice("model.gauge", self.gauge, ("free", "unit"))
        check_choice("model.schedule", self.schedule, SCHEDULES)
        check_choice("model.denoiser", self.denoiser, DENOISERS)
        check_choice("model.norm", self.norm, NORMS)
        check_choice("model.mean", self.mean, MEANS)
        check_choice("model.mean_loss", self.mean_loss, ("l2", "l1"))
        for name in ("condition_channels", "target_channels", "base_filters", "depth", "kernel_size",
                     "blocks_per_level", "tau_base_filters", "tau_depth", "time_units"):
            check_positive(f"model.{name}", getattr(self, name))
        if not 0 < self.beta_min < self.beta_max:
            raise InputError(f"model.beta_min/beta_max: need 0 < beta_min < beta_max, got {self.beta_min}, "
                             f"{self.beta_max}")

    @property
    def size_multiple(self) -> int:
        """Images must be divisible by this (the U-Nets halve the size depth times); others are padded."""
        return 2 ** max(self.depth, self.tau_depth)


@dataclass(frozen=True)
class LossConfig:
    """L = L_diff + w * (L_beta + L_prior + alpha * L_gamma) (cvdm-math.md section 3)."""

    w: float = 2.0
    alpha: float = 1e-3
    # L_beta's residual: "paper" ||d gamma/dt + beta gamma||^2, whose weight gamma^2 vanishes late in t, or
    # "relative" ||d log gamma/dt + beta||^2 = ||tau (lambda - rho')||^2, the same equation divided by gamma.
    consistency: str = "paper"
    # How a batch draws its t: "uniform" (i.i.d.) or "stratified" (VDM's low-discrepancy draw: t_b = u + b / B
    # mod 1 over the B examples of a replica's batch, one u per batch).
    t_sampling: str = "uniform"

    def __post_init__(self):
        for name in ("w", "alpha"):
            check_non_negative(f"loss.{name}", getattr(self, name))
        check_choice("loss.consistency", self.consistency, ("paper", "relative"))
        check_choice("loss.t_sampling", self.t_sampling, ("uniform", "stratified"))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 1e-4
    gradient_clip: float = 1.0  # global norm; 0 disables
    # With a mean network (model.mean = "network" / "condition+network"): clip its gradient and the other
    # networks' each to gradient_clip on their own global norms, so the diffusion's large gradients do not scale
    # the mean network's updates down with theirs (the two share no gradient: the diffusion sees the mean fixed).
    gradient_clip_per_network: bool = False
    ema_momentum: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    preview_every: int = 500
    validation_fraction: float = 0.1
    validation_batches: int = 2
    # The U-Nets' compute dtype (Keras mixed precision; the schedule and the loss stay float32): "float32",
    # "mixed_float16" (with dynamic loss scaling) or "mixed_bfloat16".
    precision: str = "float32"
    # Compile the training step with XLA (tf.function(jit_compile=True)).
    jit_compile: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "preview_every"):
            check_positive(f"train.{name}", getattr(self, name))
        if not self.learning_rate > 0:
            raise InputError(f"train.learning_rate: must be > 0, got {self.learning_rate}")
        if not 0 <= self.ema_momentum < 1:
            raise InputError(f"train.ema_momentum: must be in [0, 1), got {self.ema_momentum}")
        if not 0 <= self.validation_fraction < 1:
            raise InputError(f"train.validation_fraction: must be in [0, 1), got {self.validation_fraction}")
        check_positive("train.validation_batches", self.validation_batches)
        check_choice("train.precision", self.precision, PRECISIONS)
        if self.gradient_clip_per_network and self.precision == "mixed_float16":
            raise InputError("train.gradient_clip_per_network: not with mixed_float16 (the train step would clip "
                             "loss-scaled gradients); use float32 or mixed_bfloat16")
        if not 0 <= self.seed < 2**31:
            raise InputError(f"train.seed: must be in [0, 2**31), got {self.seed}")


@dataclass(frozen=True)
class SamplerConfig:
    """T steps, K samples, the update (ddpm | ddim) and how the schedule is discretised (cvdm_tf/sampler.py)."""

    DISCRETISATIONS: typing.ClassVar[tuple] = ("exact", "paper")  # gbar_i = gamma(t_i, y) | eq. 10
    GRIDS: typing.ClassVar[tuple] = ("uniform", "log-snr")  # t_i = i / T | uniform in log-SNR
    # The denoiser's compute dtype when sampling; auto: bfloat16 where the hardware has it (sampler.native_bfloat16)
    PRECISIONS: typing.ClassVar[tuple] = ("auto", "float32", "bfloat16")

    steps: int = 200
    samples: int = 4
    method: str = "ddpm"
    discretisation: str = "exact"
    grid: str = "uniform"
    precision: str = "auto"
    antithetic: bool = False  # samples in pairs of opposite noise (sampler.py): the mean nears E[x | y] sooner
    estimate: str = "mean"  # the point estimate `infer` writes besides the mean and shows (ESTIMATES)

    def __post_init__(self):
        check_positive("sampler.steps", self.steps)
        check_positive("sampler.samples", self.samples)
        if self.antithetic and self.samples % 2:
            raise InputError(f"sampler.antithetic draws samples in pairs: sampler.samples must be even, got "
                             f"{self.samples}")
        check_choice("sampler.method", self.method, SAMPLERS)
        check_choice("sampler.discretisation", self.discretisation, self.DISCRETISATIONS)
        check_choice("sampler.grid", self.grid, self.GRIDS)
        check_choice("sampler.precision", self.precision, self.PRECISIONS)
        check_choice("sampler.estimate", self.estimate, ESTIMATES)


def _default_data():
    from cvdm_tf.tasks import data_config_class

    return data_config_class("qpi")()


@dataclass(frozen=True)
class Config:
    task: str = "qpi"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    #: The task's own DataConfig (cvdm_tf/tasks/<task>.py).
    data: typing.Any = field(default_factory=_default_data)

    def __post_init__(self):
        from cvdm_tf.tasks import TASK_NAMES, data_config_class

        check_choice("task", self.task, TASK_NAMES)
        expected = data_config_class(self.task)
        if not isinstance(self.data, expected):
            raise InputError(f"data: task {self.task!r} needs its own [data] table ({expected.__module__}), got "
                             f"{type(self.data).__module__}")
        if self.sampler.estimate == "mean_network" and self.model.kind == "regression":
            raise InputError("sampler.estimate = \"mean_network\": a regression (model.kind) has no mean network; its "
                             "one output is its estimate (sampler.estimate = \"mean\")")
        if self.sampler.estimate == "mean_network" and not self.model.mean.endswith("network"):
            raise InputError(f"sampler.estimate = \"mean_network\" needs a mean network (model.mean = \"network\" or "
                             f"\"condition+network\"), got model.mean = {self.model.mean!r}")
        # Training crops go through the U-Nets whole (no padding), so they must survive `depth` halvings.
        multiple = self.model.size_multiple
        if self.data.image_size % multiple:
            low = max(multiple, self.data.image_size // multiple * multiple)
            raise InputError(
                f"data.image_size: {self.data.image_size} is not a multiple of {multiple} (the U-Nets halve it "
                f"max(model.depth, model.tau_depth) = {multiple.bit_length() - 1} times); use e.g. {low} or "
                f"{low + multiple}"
            )

    def replace(self, **sections) -> "Config":
        """A copy with some fields changed: `cfg.replace(train={"steps": 10}, model={"schedule": "linear"})`."""
        changes = {}
        for name, value in sections.items():
            if isinstance(value, dict):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)


# === Reading ===


def from_dict(data: dict, source: str = "config") -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and values of the wrong type (naming the key)."""
    return _build(Config, data, prefix="", source=source)


def load_config(path) -> Config:
    """Read a TOML config file. Errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read config ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    return from_dict(data, source=str(path))


def default_config(task: str) -> Config:
    """The shipped config for a task (`configs/<task>.toml`)."""
    from cvdm_tf.tasks import TASK_NAMES

    if task not in TASK_NAMES:
        raise InputError(f"unknown task {task!r} (known: {', '.join(TASK_NAMES)})")
    text = resources.files("cvdm_tf.configs").joinpath(f"{task}.toml").read_text()
    return from_dict(tomllib.loads(text), source=f"configs/{task}.toml")


def _build(cls, data, prefix, source):
    if not isinstance(data, dict):
        raise InputError(f"{source}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise InputError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        if cls is Config and key == "data":  # the [data] table is the task's own
            from cvdm_tf.tasks import data_config_class

            task = data.get("task", "qpi")
            kind = data_config_class(task) if isinstance(task, str) else kind
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, prefix=f"{prefix}{key}.", source=source)
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def _coerce(value, kind, key, source):
    # bool is a subclass of int in Python: never accept it for a number, nor a number for a bool.
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        raise InputError(f"{source}: key '{key}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return kind(value)


def check_choice(key, value, choices):
    if value not in choices:
        raise InputError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def check_positive(key, value):
    if value <= 0:
        raise InputError(f"{key}: must be > 0, got {value}")


def check_non_negative(key, value):
    if not value >= 0:  # also rejects NaN
        raise InputError(f"{key}: must be >= 0, got {value}")


# === Writing ===


def dump_config(config: Config) -> str:
    """TOML text of a config (scalars only, so a tiny writer suffices and round-trips through tomllib)."""
    lines = [f"task = {_toml_value(config.task)}"]
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        lines.append(f"\n[{section.name}]")
        for item in dataclasses.fields(value):
            lines.append(f"{item.name} = {_toml_value(getattr(value, item.name))}")
    return "\n".join(lines) + "\n"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def as_dict(config: Config) -> dict:
    return dataclasses.asdict(config)

