"""The description of a lip-sync job, typed and frozen, and the ONE place its values are parsed.

A job has three parts:

- ``SyncJob``: what to sync (video, audio, output, which face(s), each face's own audio,
  ``max_seconds``, seed, x264 quality);
- ``Sampling``: how to sample (solver, steps, guidance, DeepCache interval, overlap, Whisper
  windows);
- ``RunOptions``: where to run (chunk batch, fsdp, memory budget, devices, dtype, compile cache,
  face backend).

Every edge (infer.py's flags, a batch CSV row, the web app's form, the live protocol) hands its
raw values (strings, numbers, None for "not given") to ``parse_job`` / ``parse_sampling`` /
``parse_run``, which fill what is missing from the config's defaults (``JobDefaults.from_config``)
and raise ``OptionError`` with the same one-line message whichever door the value came through:
``"steps '0': must be a whole number >= 1"``. Values already parsed (the Python API) are checked by
the same functions when the dataclasses are built.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

from lipsync_jax.accelerators import TARGETS
from lipsync_jax.audio.features import DEFAULT_INFERENCE_WINDOWS
from lipsync_jax.audio.windows import AUDIO_WINDOWS
from lipsync_jax.diffusion.sampler import SOLVERS
from lipsync_jax.pipeline.errors import InferenceError

FACE_CHOICES = ("largest", "left", "right")  # or a track id, "all", "ID,ID"
FACE_BACKENDS = ("mediapipe", "insightface")
DTYPES = ("bfloat16", "float32")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
MAX_SEED = 2 ** 32 - 1  # jax.random.key takes a uint32 seed without x64: larger ones would wrap around
NUM_FRAMES = 16  # frames per UNet window (configs' data.num_frames)


class OptionError(InferenceError, ValueError):
    """A setting has an unusable value; the message names the setting, the value and the rule."""


# ---------------------------------------------------------------------------- value parsers
def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _show(value: Any) -> str:
    """A value as messages write it: numbers plainly (-1, 1.55, nan), other text quoted ('abc')."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    text = str(value).strip()
    try:
        float(text)
    except ValueError:
        return repr(text)
    return text


def parse_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number in [low, high] from an int, its text ("12"), or a float / text with no fraction
    (12.0: web forms send numbers as floats); 12.5, "abc", NaN and booleans are refused."""
    rule = ("a whole number" + (f" >= {low}" if low is not None and high is None else "")
            + (f" in {low}..{high}" if low is not None and high is not None else ""))
    if isinstance(value, bool):
        raise OptionError(f"{name} {value!r}: must be {rule}")
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, int):
        number = value
    elif text is not None and text.lstrip("+-").isdigit():
        number = int(text)
    else:
        try:
            whole = float(text if text is not None else value)
        except (TypeError, ValueError):
            whole = math.nan
        if not (math.isfinite(whole) and whole.is_integer()):
            raise OptionError(f"{name} {_show(value)}: must be {rule}")
        number = int(whole)
    if (low is not None and number < low) or (high is not None and number > high):
        raise OptionError(f"{name} {number}: must be {rule}")
    return number


def parse_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                decimals: int | None = None) -> float:
    """A finite number in [low, high] (NaN and infinities refused), with at most ``decimals`` decimals."""
    rule = "a finite number" + (f" in {low:g}..{high:g}" if low is not None and high is not None else
                                f" >= {low:g}" if low is not None else "")
    if isinstance(value, bool):
        raise OptionError(f"{name} {value!r}: must be {rule}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} {_show(value)}: must be {rule}") from None
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        raise OptionError(f"{name} {_show(value)}: must be {rule}")
    if decimals is not None and abs(round(number, decimals) - number) > 1e-9 * max(1.0, abs(number)):
        raise OptionError(f"{name} {_show(value)}: use at most {decimals} decimals (each distinct value compiles "
                          f"a program of its own)")
    return number


def parse_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise OptionError(f"{name} {_show(value)}: choose one of {', '.join(choices)}")
    return text


def parse_seed(value: Any) -> int:
    return parse_int("seed", value, low=0, high=MAX_SEED)


def parse_face(value: Any) -> str:
    """``largest`` | ``left`` | ``right`` | a track id | ``all`` | ``ID,ID,...`` (several people)."""
    text = str(value).strip().lower()
    if text in FACE_CHOICES or text == "all" or text.isdigit():
        return text
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return ",".join(parts)
    raise OptionError(f"face {_show(value)}: use largest, left, right, a track id (see --list_faces), all, "
                      f"or track ids such as 0,1")


def parse_face_audio(value: Any) -> Mapping[str, str]:
    """``"0=a.wav,1=b.wav"`` or a mapping -> {face choice: audio path} (read-only)."""
    if not _given(value):
        return types.MappingProxyType({})
    items = (value.items() if isinstance(value, Mapping) else
             [item.partition("=")[::2] if "=" in item else (item, "") for item in str(value).split(",")])
    result: dict[str, str] = {}
    for key, path in items:
        key, path = str(key).strip().lower(), str(path).strip()
        if not key or not path:
            raise OptionError(f"face_audio {_show(value)}: each entry is ID=path (e.g. 0=alice.wav,1=bob.wav)")
        if key in result:
            raise OptionError(f"face_audio: face {key} is given twice")
        if key != "all" and "," not in key:
            parse_face(key)
        else:
            raise OptionError(f"face_audio: {key!r} is not one face (use an id, left, right or largest)")
        result[key] = path
    return types.MappingProxyType(result)


def parse_plan_for(value: Any) -> str | None:
    """A named accelerator (lipsync_jax/accelerators) to plan the memory for, None: the local device."""
    if not _given(value):
        return None
    name = str(value).strip().lower()
    if name not in TARGETS:
        raise OptionError(f"plan_for {_show(value)}: choose one of {', '.join(TARGETS)}")
    return name


def parse_max_seconds(value: Any) -> float | None:
    """Seconds of the audio to use (None: all); at least one video frame's worth."""
    if not _given(value):
        return None
    return parse_float("max_seconds", value, low=0.04)


# ---------------------------------------------------------------------------- the three parts
@dataclasses.dataclass(frozen=True)
class SyncJob:
    """What to sync. ``face``: who (``largest``, ``left``, ``right``, a track id, ``all`` or ``ID,ID``;
    None: no detection pre-pass, the plain single-face tracker); ``face_audio``: {face: audio path}
    for dialogue dubbing (``audio`` is then the soundtrack and sets the length)."""

    video: str
    audio: str
    output: str
    face: str | None = "largest"
    face_audio: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    max_seconds: float | None = None
    seed: int = 1247
    crf: int = 18
    preset: str = "medium"

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("face_audio", parse_face_audio(self.face_audio))
        if self.face is not None:
            set_("face", parse_face(self.face))
        if self.face_audio and self.face not in (None, "largest"):
            raise OptionError(f"use either face ({self.face}) or face_audio, not both")
        set_("max_seconds", parse_max_seconds(self.max_seconds))
        set_("seed", parse_seed(self.seed))
        set_("crf", parse_int("crf", self.crf, low=0, high=51))
        set_("preset", parse_choice("preset", self.preset, X264_PRESETS))

    @property
    def several_faces(self) -> bool:
        return bool(self.face_audio) or (self.face is not None and (self.face == "all" or "," in self.face))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to sample: LatentSync's DDIM loop (20 steps, guidance 1.5) unless changed. ``solver``:
    ``ddim`` | ``dpmsolver++`` | ``lcm`` (a consistency student, ``JobDefaults``);
    ``deepcache_interval`` 0/1 = off (not with lcm); ``overlap`` K: consecutive
    16-frame windows share K frames (one face, one device); ``audio_windows``: Whisper's windows
    (``sliding``, the default: overlapping 30 s windows, no seam every 30 s and exactly LatentSync's
    features up to 30 s of audio; ``latentsync``: its disjoint windows, bit-parity on long audio)."""

    steps: int = 20
    guidance: float = 1.5
    solver: str = "ddim"
    deepcache_interval: int = 0
    overlap: int = 0
    audio_windows: str = DEFAULT_INFERENCE_WINDOWS

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("steps", parse_int("steps", self.steps, low=1))
        set_("guidance", parse_float("guidance", self.guidance, low=0.0))
        set_("solver", parse_choice("scheduler", self.solver, SOLVERS))
        interval = parse_int("deepcache_interval", self.deepcache_interval, low=0)
        set_("deepcache_interval", interval if interval > 1 else 0)  # 0 and 1 are the same: off
        set_("overlap", parse_int("overlap", self.overlap, low=0, high=NUM_FRAMES - 1))
        set_("audio_windows", parse_choice("audio_windows", self.audio_windows, AUDIO_WINDOWS))
        if self.solver == "lcm" and self.deepcache_interval:
            raise OptionError(f"deepcache_interval {self.deepcache_interval} does not combine with scheduler lcm "
                              "(a consistency student's few steps are far apart: nothing to cache)")

    def sampler_options(self) -> dict[str, Any]:
        """The sample_chunk keyword arguments beyond LatentSync's loop (empty for it)."""
        options: dict[str, Any] = {}
        if self.solver != "ddim":
            options["solver"] = self.solver
        if self.deepcache_interval:
            options["deepcache_interval"] = self.deepcache_interval
        return options

    @property
    def program_key(self) -> tuple:
        """What a compiled chunk program depends on (audio windows do not: they are host work)."""
        return (self.steps, self.guidance, self.solver, self.deepcache_interval, self.overlap)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where to run. ``chunk_batch``: 16-frame chunks per device per program call (None: 1 on CPU, 2
    on GPU/TPU); ``fsdp``: devices the weights are split over (None: automatic); ``max_vram_gb``:
    the device-memory budget the planner fits (None: no limit); ``devices``: use the first N local
    devices (None: all); ``dtype``: None = bfloat16 on GPU/TPU, float32 on CPU; ``compile_cache``:
    the persistent XLA cache folder (None: the default one; "" : off). ``plan_for``: a named
    accelerator (``lipsync_jax.accelerators.TARGETS``) the memory plan is made for instead of the
    local devices; ``plan_only``: print the plan and run nothing (``plan_for`` implies it:
    serving/plan.py). ``vae_frames``, ``queue_batches`` and ``restore_threads`` tune memory and
    host threads (no flags)."""

    chunk_batch: int | None = None
    fsdp: int | None = None
    max_vram_gb: float | None = None
    devices: int | None = None
    dtype: str | None = None
    compile_cache: str | None = None
    face_backend: str = "mediapipe"
    plan_for: str | None = None
    plan_only: bool = False
    vae_frames: int | None = None
    queue_batches: int = 2
    restore_threads: int | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        for name in ("chunk_batch", "fsdp", "devices", "vae_frames", "restore_threads"):
            value = getattr(self, name)
            set_(name, None if not _given(value) else parse_int(name, value, low=1))
        budget = self.max_vram_gb
        budget = None if not _given(budget) else parse_float("max_vram", budget, low=0.0)
        set_("max_vram_gb", budget or None)  # 0: no limit
        set_("dtype", None if not _given(self.dtype) else parse_choice("dtype", self.dtype, DTYPES))
        set_("face_backend", parse_choice("face_backend", self.face_backend, FACE_BACKENDS))
        set_("queue_batches", parse_int("queue_batches", self.queue_batches, low=1))
        set_("plan_for", parse_plan_for(self.plan_for))
        if not isinstance(self.plan_only, bool):
            raise OptionError(f"plan_only {_show(self.plan_only)}: must be True or False")

    @property
    def plans_only(self) -> bool:
        """Print the memory plan and run nothing (``plan_only``, or a plan for another device)."""
        return self.plan_only or self.plan_for is not None


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    """What one job produced (``LipsyncEngine.run``)."""

    output_path: str
    num_frames: int  # frames written
    num_source_frames: int  # video frames read (at the models' fps)
    looped: bool  # the video was looped ping-pong to cover the audio
    frames_kept: int  # output frames written unchanged (no face found there)
    duration: float  # seconds of audio in the output
    time_to_first_frame: float | None = None  # seconds from the start of the job to the first frame encoded
    seconds: float | None = None  # wall time of the job
    chunk_batches: int = 0  # device-program calls
    store_bytes: int = 0  # bytes of the compressed frame store (ping-pong loops)
    face_tracks: tuple[int, ...] = ()  # face track ids lip-synced, in lane order (empty: no pre-pass ran)
    program_calls: Mapping[str, int] = dataclasses.field(default_factory=dict)  # {"encode": n, "moments": n}


@dataclasses.dataclass(frozen=True)
class Request:
    """A whole request: what (``job``), how (``sampling``); where is the service's ``RunOptions``."""

    job: SyncJob
    sampling: Sampling


# ---------------------------------------------------------------------------- defaults and parsing
@dataclasses.dataclass(frozen=True)
class JobDefaults:
    """The defaults, read in ONE place: seed, sampling, memory budget, fps from the config, and for
    a consistency-distilled UNet checkpoint (``lipsync_jax.distilled``) its own sampling: scheduler
    lcm, its ``student_steps``, guidance 1 (its scale is distilled in). ``student``: that
    checkpoint's "student" block (None: any other UNet); ``unet_checkpoint``: its path (messages);
    ``note``: one line saying what the checkpoint decided (None: nothing)."""

    seed: int = 1247
    sampling: Sampling = Sampling()
    max_vram_gb: float | None = None
    fps: float = 25.0
    student: Mapping[str, Any] | None = None
    unet_checkpoint: str | None = None
    note: str | None = None

    @classmethod
    def from_config(cls, config, unet_checkpoint: str | None = None, random_init: bool = False) -> JobDefaults:
        """The config's defaults; a student ``unet_checkpoint``'s metadata replaces the sampling
        defaults (steps, scheduler, guidance, DeepCache off). With ``random_init`` (random weights)
        the checkpoint is not read."""
        from lipsync_jax.distilled import StudentOptionError, student_info, student_sampling

        if random_init:
            unet_checkpoint = None
        run = config.run
        sampling = Sampling(steps=run.inference_steps, guidance=run.guidance_scale,
                            solver=run.get("scheduler", "ddim"), deepcache_interval=run.get("deepcache_interval", 0),
                            overlap=run.get("overlap", 0),
                            audio_windows=run.get("audio_windows", DEFAULT_INFERENCE_WINDOWS))
        try:
            info = student_info(unet_checkpoint)
        except StudentOptionError as error:
            raise OptionError(str(error)) from None
        note = None
        if info is not None:
            choice = student_sampling(info)
            sampling = dataclasses.replace(sampling, solver=choice.solver, steps=choice.num_steps,
                                           guidance=choice.guidance_scale, deepcache_interval=0)
            note, info = f"{unet_checkpoint}: {choice.note}", types.MappingProxyType(dict(info))
        defaults = cls(seed=parse_seed(run.seed), sampling=sampling, fps=float(config.data.video_fps),
                       max_vram_gb=parse_float("max_vram", run.get("max_vram_gb", 0.0) or 0.0, low=0.0) or None,
                       student=info, unet_checkpoint=None if unet_checkpoint is None else str(unet_checkpoint),
                       note=note)
        return dataclasses.replace(defaults, note=note or defaults.lcm_warning(sampling))

    def check_sampling(self, sampling: Sampling, given: Mapping[str, Any] = types.MappingProxyType({})) -> Sampling:
        """``sampling`` as this UNet runs it: for a student, the values given (``given``: the
        Sampling fields a user set) checked against its metadata (``OptionError`` naming the
        checkpoint: another scheduler, guidance > 1, steps beyond its origin steps) and guidance
        set to 1; any other UNet's sampling unchanged."""
        from lipsync_jax.distilled import StudentOptionError, student_sampling

        if self.student is None:
            return sampling
        try:
            choice = student_sampling(self.student, solver=sampling.solver if "solver" in given else None,
                                      num_steps=sampling.steps if "steps" in given else None,
                                      guidance_scale=sampling.guidance if "guidance" in given else None)
        except StudentOptionError as error:
            raise OptionError(f"{self.unet_checkpoint}: {error}") from None
        return dataclasses.replace(sampling, solver=choice.solver, steps=choice.num_steps,
                                   guidance=choice.guidance_scale)

    def lcm_warning(self, sampling: Sampling) -> str | None:
        """One warning line when ``sampling`` asks for scheduler lcm and the UNet is no student."""
        from lipsync_jax.distilled import student_sampling

        if self.student is not None:
            return None
        return student_sampling(None, solver=sampling.solver, checkpoint=self.unet_checkpoint).note


SAMPLING_FIELDS = ("steps", "guidance", "solver", "deepcache_interval", "overlap", "audio_windows")
JOB_FIELDS = ("face", "face_audio", "max_seconds", "seed", "crf", "preset")


def parse_sampling(values: Mapping[str, Any], defaults: JobDefaults) -> Sampling:
    """A ``Sampling`` from raw values (missing / None / "" -> the default)."""
    given = {name: values[name] for name in SAMPLING_FIELDS if _given(values.get(name))}
    return defaults.check_sampling(dataclasses.replace(defaults.sampling, **given), given)


def parse_job(video: str, audio: str, output: str, values: Mapping[str, Any], defaults: JobDefaults) -> SyncJob:
    """A ``SyncJob`` from raw values (missing / None / "" -> the default)."""
    given = {name: values[name] for name in JOB_FIELDS if _given(values.get(name))}
    given.setdefault("seed", defaults.seed)
    return SyncJob(video=video, audio=audio, output=output, **given)


def parse_request(video: str, audio: str, output: str, values: Mapping[str, Any], defaults: JobDefaults) -> Request:
    """Job + sampling from one set of raw values; cross-field rules checked here (``check_request``)."""
    request = Request(parse_job(video, audio, output, values, defaults), parse_sampling(values, defaults))
    check_request(request)
    return request


def check_request(request: Request) -> None:
    """Rules between fields: overlapping windows lip-sync one face."""
    if request.sampling.overlap and request.job.several_faces:
        raise OptionError(f"overlap {request.sampling.overlap} lip-syncs one face: not with several faces "
                          f"(face {request.job.face!r}, face_audio)")


def parse_run(values: Mapping[str, Any], defaults: JobDefaults | None = None) -> RunOptions:
    """A ``RunOptions`` from raw values; ``max_vram`` falls back to the config's ``run.max_vram_gb``."""
    names = [f.name for f in dataclasses.fields(RunOptions)]
    given = {name: values[name] for name in names if _given(values.get(name))}
    if values.get("compile_cache") is not None:  # "" turns the persistent cache off
        given["compile_cache"] = values["compile_cache"]
    if _given(values.get("max_vram")):
        given["max_vram_gb"] = values["max_vram"]
    elif defaults is not None and "max_vram_gb" not in given:
        given["max_vram_gb"] = defaults.max_vram_gb
    return RunOptions(**given)
