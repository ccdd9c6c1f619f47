"""Strict, typed training configs: every section of a task's YAML is parsed into a dataclass.

An unknown or misspelled key anywhere (``loss: {hide_motion_form: 900}``) is a one-line
:class:`~microcinema.core.errors.MicroCinemaError` naming the key, the section and the allowed keys, raised
before any work starts. The ``model:`` section is passed through to the model's constructor, whose
signature validates it (:func:`check_model_section`).

Sections of the diffusion tasks (t2i, video, interp):

* top level: ``init_from`` (video/interp), ``vae``, ``text_encoder``, ``model``, ``loss``, ``data``, ``train``,
  ``phases`` (video/interp, see :class:`Phase`);
* ``data:`` with a ``type`` (:class:`ProceduralData`, :class:`CaptionsData`, :class:`WebDatasetData`);
* ``loss:`` (:class:`T2ILoss`, :class:`VideoLoss`);
* ``train:`` (:class:`~microcinema.training.trainer.TrainConfig`).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Union

from microcinema.core.diffusion import PREDICTION_TYPES
from microcinema.core.errors import MicroCinemaError
from microcinema.data.video_dataset import SAMPLE_MODES, TOO_SHORT_MODES

__all__ = [
    "ProceduralData", "CaptionsData", "WebDatasetData", "DataConfig", "DATA_TYPES", "T2ILoss", "VideoLoss",
    "Phase", "DiffusionTaskConfig", "parse_section", "parse_data", "check_keys", "check_model_section",
    "parse_diffusion_config", "ARTVProbe",
]


def _where(path: Any) -> str:
    return f"config {path}" if path else "config"


def check_keys(raw: Any, allowed: list[str] | tuple[str, ...], section: str, path: Any = None) -> dict[str, Any]:
    """``raw`` as a dict whose keys are all in ``allowed``, else a one-line error naming the first stray key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MicroCinemaError(f"{_where(path)}: section '{section}' must be a mapping, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise MicroCinemaError(f"{_where(path)}: unknown key {unknown[0]!r} in section '{section}'; "
                               f"allowed: {', '.join(allowed)}")
    return dict(raw)


def parse_section(cls: type, raw: Any, section: str, path: Any = None, **fixed: Any) -> Any:
    """A dataclass ``cls`` from mapping ``raw``: unknown keys and missing required keys are errors."""
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in fixed]
    values = check_keys(raw, names, section, path)
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in fixed and f.name not in values
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise MicroCinemaError(f"{_where(path)}: section '{section}' lacks {', '.join(required)}")
    try:
        return cls(**values, **fixed)
    except (TypeError, ValueError) as error:
        raise MicroCinemaError(f"{_where(path)}: bad section '{section}': {error}") from None


def check_model_section(constructor: Any, model: dict[str, Any], path: Any = None,
                        exclude: tuple[str, ...] = ("self",)) -> None:
    """The ``model:`` section's keys must be arguments of ``constructor`` (a class or function)."""
    target = constructor.__init__ if inspect.isclass(constructor) else constructor
    allowed = [n for n, p in inspect.signature(target).parameters.items()
               if n not in exclude and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    check_keys(model, allowed, "model", path)


# --------------------------------------------------------------------------------------------- data


def _size_ok(size: Any) -> bool:
    if isinstance(size, bool):
        return False
    if isinstance(size, int):
        return size > 0
    return isinstance(size, (list, tuple)) and len(size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)


@dataclass
class _ClipSettings:
    def _check_clip(self) -> None:
        if not _size_ok(self.size):
            raise ValueError(f"size must be a positive int or [height, width], got {self.size!r}")
        if self.num_frames is not None and (not isinstance(self.num_frames, int) or self.num_frames < 1):
            raise ValueError(f"num_frames must be an integer >= 1, got {self.num_frames!r}")
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")


@dataclass
class ProceduralData(_ClipSettings):
    """``type: procedural``: the procedural domain rendered from ``seed`` (``num`` items: clips of
    ``num_frames`` at ``fps`` for video/interp, key frames for t2i), encoded once into
    ``output_dir/latents.safetensors``."""

    num: int
    seed: int
    num_frames: int | None = None
    fps: float | None = None
    size: int = 64
    digit_weight: float | None = None
    turn_fraction: float = 0.0     # ART-V only: this fraction of turning clips (a lead-in of another motion)
    type: str = "procedural"

    def __post_init__(self) -> None:
        self._check_clip()
        if not isinstance(self.num, int) or self.num < 1:
            raise ValueError(f"num must be an integer >= 1, got {self.num!r}")
        t = self.turn_fraction
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise ValueError(f"turn_fraction must be a number in [0, 1], got {t!r}")


@dataclass
class _RealVideo(_ClipSettings):
    num_frames: int = 9
    fps: float = 2.0
    size: Union[int, list] = 64
    sample: str = "random"
    too_short: str = "skip"
    seed: int = 0
    limit: int | None = None       # at most this many clips per process (a quick run on a big data set)
    cache_chunk: int = 256         # clips per latent-cache chunk (the unit of a resumed encoding)

    def _check_real(self) -> None:
        self._check_clip()
        if self.sample not in SAMPLE_MODES:
            raise ValueError(f"sample must be one of {', '.join(SAMPLE_MODES)}, got {self.sample!r}")
        if self.too_short not in TOO_SHORT_MODES:
            raise ValueError(f"too_short must be one of {', '.join(TOO_SHORT_MODES)}, got {self.too_short!r}")
        if not isinstance(self.cache_chunk, int) or self.cache_chunk < 1:
            raise ValueError(f"cache_chunk must be an integer >= 1, got {self.cache_chunk!r}")


@dataclass
class CaptionsData(_RealVideo):
    """``type: captions``: a caption table of real videos (WebVid CSV or JSONL,
    :class:`~microcinema.data.video_dataset.VideoCaptionDataset`); the rows are split across processes."""

    table: str = ""
    video_root: str | None = None
    type: str = "captions"

    def __post_init__(self) -> None:
        self._check_real()
        if not self.table:
            raise ValueError("table (a .csv or .jsonl caption table) is required")


@dataclass
class WebDatasetData(_RealVideo):
    """``type: webdataset``: tar shards in video2dataset's layout (``<key>.mp4`` + ``<key>.txt`` and/or
    ``<key>.json``), a brace pattern or a list; split across processes
    (:mod:`microcinema.data.webdataset`)."""

    shards: Union[str, list] = ""
    type: str = "webdataset"

    def __post_init__(self) -> None:
        self._check_real()
        if not self.shards:
            raise ValueError("shards (a brace pattern or a list of .tar files) is required")


DataConfig = Union[ProceduralData, CaptionsData, WebDatasetData]
DATA_TYPES: dict[str, type] = {"procedural": ProceduralData, "captions": CaptionsData, "webdataset": WebDatasetData}


def parse_data(raw: Any, path: Any = None) -> DataConfig:
    """The ``data:`` section by its ``type`` (default ``procedural``, the embedded family's)."""
    raw = check_keys(raw, sorted({f.name for cls in DATA_TYPES.values() for f in dataclasses.fields(cls)}),
                     "data", path) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        raise MicroCinemaError(f"{_where(path)}: section 'data' must be a mapping")
    kind = raw.get("type", "procedural")
    if kind not in DATA_TYPES:
        raise MicroCinemaError(f"{_where(path)}: unknown data type {kind!r}; allowed: {', '.join(DATA_TYPES)}")
    return parse_section(DATA_TYPES[kind], {k: v for k, v in raw.items() if k != "type"}, f"data (type {kind})",
                         path)


# --------------------------------------------------------------------------------------------- loss


@dataclass
class T2ILoss:
    """The text-to-image loss (:class:`~microcinema.core.diffusion.DiffusionLoss`, uniform steps, plain
    epsilon or v loss)."""

    condition_dropout: float
    latents: str = "mode"                 # "mode": the VAE posterior mean; "sample": a fresh draw
    prediction_type: str | None = None    # default: the init model's scheduler config, else epsilon
    min_snr_gamma: float | None = None    # Min-SNR-gamma weighting (Hang et al. 2023; paper default 5)

    def __post_init__(self) -> None:
        _check_loss(self)


@dataclass
class VideoLoss:
    """Stage two's loss (base and interpolation models); defaults are the paper's."""

    noise_prior_lambda: float = 0.03      # Appearance Noise Prior (section 3.3)
    condition_dropout: float = 0.1
    latents: str = "mode"
    spatial_lr_scale: float = 0.1         # section 4.1
    high_noise_fraction: float = 0.0      # timestep hook: this share from [high_noise_from, T)
    high_noise_from: int = 850
    max_x0_weight: float = 1.0            # weighting hook: clamp(1 / SNR, 1, max_x0_weight)
    hide_motion_from: int | None = None   # input hook: noise_prior.hide_motion_at_high_noise
    prediction_type: str | None = None
    min_snr_gamma: float | None = None    # Min-SNR-gamma weighting (Hang et al. 2023); not with max_x0_weight

    def __post_init__(self) -> None:
        _check_loss(self)
        if not 0 <= self.high_noise_fraction <= 1:
            raise ValueError(f"high_noise_fraction must be in [0, 1], got {self.high_noise_fraction}")
        if self.max_x0_weight < 1:
            raise ValueError(f"max_x0_weight must be >= 1, got {self.max_x0_weight}")
        if self.max_x0_weight != 1 and self.prediction_type not in (None, "epsilon"):
            raise ValueError(f"max_x0_weight is an epsilon-loss weighting; drop it (or set 1) for prediction_type "
                             f"{self.prediction_type!r}")
        if self.max_x0_weight != 1 and self.min_snr_gamma is not None:
            raise ValueError("max_x0_weight and min_snr_gamma are two loss weightings; set one of them")
        # timesteps: integers >= 0 here; below the schedule's num_train_timesteps (check_timesteps, when the
        # task knows its schedule, before any work)
        if self.hide_motion_from is not None and not _is_step(self.hide_motion_from):
            raise ValueError(f"hide_motion_from must be an integer timestep in [0, num_train_timesteps) or null, "
                             f"got {self.hide_motion_from!r}")
        if not _is_step(self.high_noise_from):
            raise ValueError(f"high_noise_from must be an integer timestep in [0, num_train_timesteps), "
                             f"got {self.high_noise_from!r}")
        if self.noise_prior_lambda < 0:
            raise ValueError(f"noise_prior_lambda must be >= 0, got {self.noise_prior_lambda}")

    def check_timesteps(self, num_train_timesteps: int, path: Any = None) -> None:
        """The timestep options against the training schedule's length (one-line error)."""
        for name in ("hide_motion_from", "high_noise_from"):
            value = getattr(self, name)
            if value is not None and not value < num_train_timesteps:
                raise MicroCinemaError(f"{_where(path)}: section 'loss': {name} must be an integer timestep in "
                                       f"[0, {num_train_timesteps}) or null, got {value!r}")


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_loss(loss: Any) -> None:
    if not 0 <= loss.condition_dropout <= 1:
        raise ValueError(f"condition_dropout must be in [0, 1], got {loss.condition_dropout}")
    if loss.latents not in ("mode", "sample"):
        raise ValueError(f"latents must be 'mode' or 'sample', got {loss.latents!r}")
    if loss.prediction_type is not None and loss.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {loss.prediction_type!r}")
    gamma = loss.min_snr_gamma
    if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
        raise ValueError(f"min_snr_gamma must be a number > 0 or null, got {gamma!r}")


# --------------------------------------------------------------------------------------------- probe


@dataclass
class KeyFrameProbe:
    """``probe:`` of a t2i config on procedural data: every ``every`` steps the EMA weights draw key frames for
    fixed domain prompts (``num_digits`` digits, ``num_shapes`` shapes, from prompt seed ``prompt_seed``, apart
    from the evaluation's 999), judged from pixels (:func:`microcinema.eval.stage_one.make_probe`)."""

    every: int
    num_digits: int = 50
    num_shapes: int = 20
    steps: int = 25
    guidance_scale: float = 5.0
    prompt_seed: int = 555
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "steps"):
            if not _is_step(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("num_digits", "num_shapes"):
            if not _is_step(getattr(self, name)):
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.num_digits + self.num_shapes < 1:
            raise ValueError("the probe needs at least one prompt (num_digits + num_shapes >= 1)")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")


#: The ART-V pipeline settings a probe may set (``probe: pipeline:``).
ARTV_PROBE_SETTINGS = ("sampler", "guidance_scale", "ref_guidance_scale", "anchor_guidance_scale", "ref_noise_level")


@dataclass
class ARTVProbe:
    """``probe:`` of an ART-V config on procedural data: every ``every`` steps the EMA weights make
    ``num_sequences`` short multi-prompt videos (``num_segments`` x ``frames_per_segment`` frames, sequences of
    :func:`~microcinema.eval.longvideo.benchmark_sequences` from prompt seed ``prompt_seed``, apart from the
    benchmark's 999), frame 0 the rendered ground truth's (image mode: the probe measures ART-V, not a key-frame
    model), ``steps`` sampler steps per frame, noise from its own generator seeded ``seed``; judged from pixels
    for drift (:func:`microcinema.eval.longvideo.make_probe`). Its cost is ``num_sequences * (num_segments *
    frames_per_segment - 1) * steps`` guided frame steps: the defaults keep a probe near a minute for the embedded
    model on two CPU cores."""

    every: int
    num_sequences: int = 6
    frames_per_segment: int = 6
    num_segments: int = 2
    steps: int = 6
    prompt_seed: int = 555
    seed: int = 0
    #: sampling settings of the probe's pipeline (keys of :data:`ARTV_PROBE_SETTINGS`); unset: the pipeline's
    #: (the paper's) defaults
    pipeline: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, dict) or set(self.pipeline) - set(ARTV_PROBE_SETTINGS):
            raise ValueError(f"pipeline must map settings among {', '.join(ARTV_PROBE_SETTINGS)} to values, got "
                             f"{self.pipeline!r}")
        for name in ("every", "steps", "num_sequences", "num_segments"):
            if not _is_step(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not _is_step(self.frames_per_segment) or self.frames_per_segment < 2:
            raise ValueError(f"frames_per_segment must be an integer >= 2 (a motion needs two frames), "
                             f"got {self.frames_per_segment!r}")
        for name in ("prompt_seed", "seed"):
            if not _is_step(getattr(self, name)):
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")


# --------------------------------------------------------------------------------------------- whole config


@dataclass
class Phase:
    """One entry of ``phases:``: a training run that starts from the previous phase's final (EMA) weights and
    changes some settings. ``model`` names the options grown (zero-initialised layers); ``loss``, ``data`` and
    ``train`` entries replace the previous phase's (``data`` as a whole when its ``type`` changes).
    ``from_fp16``: start from the previous phase's weights rounded to fp16 (what its export holds)."""

    name: str
    model: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    from_fp16: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name must be a word (letters, digits, _ or -), got {self.name!r}")


@dataclass
class DiffusionTaskConfig:
    """A parsed diffusion-task config: typed ``loss`` and ``data``, ``model`` (checked against the model's
    constructor by the task) and ``train`` (a mapping: :func:`~microcinema.training.common.train_config`
    parses it with the CLI overrides)."""

    model: dict
    loss: Any
    data: DataConfig
    train: dict
    raw_data: dict
    vae: str | None = None
    text_encoder: str | None = None
    init_from: str | None = None
    phases: list = field(default_factory=list)
    path: str | None = None
    probe: KeyFrameProbe | ARTVProbe | None = None


TOP_LEVEL = {"t2i": ("vae", "text_encoder", "model", "loss", "data", "train", "probe"),
             "video": ("init_from", "vae", "text_encoder", "model", "loss", "data", "train", "phases")}


def parse_diffusion_config(config: dict[str, Any], task: str) -> DiffusionTaskConfig:
    """Parse a t2i (``task="t2i"``) or stage-two (``"video"``, also interp) config dict strictly."""
    path = config.get("_path")
    top = check_keys({k: v for k, v in config.items() if not k.startswith("_")}, TOP_LEVEL[task], "top level", path)
    for name in ("model", "loss", "data", "train"):
        if task == "t2i" or name in ("data", "train"):
            if not isinstance(top.get(name), dict):
                raise MicroCinemaError(f"{_where(path)} lacks section(s) {name}; see the shipped configs in "
                                       "microcinema/embedded/configs/ for the layout")
    loss = parse_section(T2ILoss if task == "t2i" else VideoLoss, top.get("loss") or {}, "loss", path)
    data = parse_data(top["data"], path)
    if task == "t2i" and isinstance(data, ProceduralData) and (data.num_frames or data.fps):
        raise MicroCinemaError(f"{_where(path)}: section 'data': t2i trains on key frames; drop num_frames and fps")
    if task != "t2i" and isinstance(data, ProceduralData) and not (data.num_frames and data.fps):
        raise MicroCinemaError(f"{_where(path)}: section 'data' lacks num_frames, fps (clips)")
    if isinstance(data, ProceduralData) and data.turn_fraction:
        raise MicroCinemaError(f"{_where(path)}: section 'data': turn_fraction is for ART-V only (its loss skips a "
                               f"turning clip's lead-in); drop it for {task} training")
    probe = None
    if top.get("probe") is not None:
        probe = parse_section(KeyFrameProbe, top["probe"], "probe", path)
        if not isinstance(data, ProceduralData):
            raise MicroCinemaError(f"{_where(path)}: section 'probe' judges key frames against the procedural "
                                   f"domain's ground truth; drop it for data of type {data.type!r}")
    phases = []
    for i, raw in enumerate(top.get("phases") or []):
        phase = parse_section(Phase, raw, f"phases[{i}]", path)
        for section in ("loss", "data", "train"):
            check_keys(getattr(phase, section), _section_keys(section, task), f"phases[{i}].{section}", path)
        phases.append(phase)
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise MicroCinemaError(f"{_where(path)}: phase names must differ, got {names}")
    model = check_keys(top.get("model"), list(top.get("model") or {}), "model", path)
    for key in ("vae", "text_encoder", "init_from"):
        if top.get(key) is not None and not isinstance(top[key], str):
            raise MicroCinemaError(f"{_where(path)}: '{key}' must be a name or a path, got {top[key]!r}")
    return DiffusionTaskConfig(model=model, loss=loss, data=data, train=dict(top["train"]), raw_data=dict(top["data"]),
                               vae=top.get("vae"), text_encoder=top.get("text_encoder"), init_from=top.get("init_from"),
                               phases=phases, path=path, probe=probe)


def _section_keys(section: str, task: str) -> list[str]:
    from microcinema.training.trainer import TrainConfig

    if section == "loss":
        return [f.name for f in dataclasses.fields(T2ILoss if task == "t2i" else VideoLoss)]
    if section == "data":
        return sorted({f.name for cls in DATA_TYPES.values() for f in dataclasses.fields(cls)})
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "output_dir"]
