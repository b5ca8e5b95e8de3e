"""One long-lived lip-sync service: models loaded once, one engine, jobs one at a time.

The web app (app.py), batch jobs (lipsync_jax/batch.py, ``infer.py --batch``) and Cog's
predict.py all run jobs through ``LipsyncService``; it is the ONE adapter between them and the
inference engine (``lipsync_jax.pipeline.LipsyncEngine``):

    service = LipsyncService.from_config("configs/unet/stage2.py", unet_checkpoint=..., avatar_cache="avatars/")
    result = service.run(ServiceJob("in.mp4", "speech.wav", "out.mp4", seed=1, guidance=1.5))

- Models are built once; the engine keeps one compiled device program per (steps, guidance,
  sampler options), so only a job with new settings or new shapes compiles anything.
  ``compile_count()`` counts XLA compilations in this process (``jax.monitoring``), which the
  tests use to prove a second request compiles nothing.
- ``run`` takes a lock: one device job at a time (callers queue in front of it).
- Inputs are checked with infer.py's checks (``check_inputs``) before any heavy work.
- ``avatar_cache=DIR``: the face track of each video is stored (pipeline/avatar_cache.py) and
  replayed by later jobs on the same video and settings, which skip landmarks and alignment.
- ``face``: which person to lip-sync in a video with several ("largest", "left", "right" or a
  track id, "all" without the avatar cache): a detection pre-pass finds the tracks, then the
  engine follows the chosen one(s) (pipeline/face_choice.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

_COMPILES = {"count": 0, "seconds": 0.0}
_COMPILES_LOCK = threading.Lock()
_LISTENING = False


def _on_duration(name: str, seconds: float, **_kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        with _COMPILES_LOCK:
            _COMPILES["count"] += 1
            _COMPILES["seconds"] += float(seconds)


def watch_compiles() -> None:
    """Start counting XLA backend compilations of this process (idempotent)."""
    global _LISTENING
    import jax

    if not _LISTENING:
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _LISTENING = True


def compile_count() -> int:
    with _COMPILES_LOCK:
        return int(_COMPILES["count"])


@dataclasses.dataclass(frozen=True)
class ServiceJob:
    video: str
    audio: str
    output: str
    seed: int | None = None  # None: the config's run.seed
    guidance: float | None = None  # None: run.guidance_scale
    steps: int | None = None  # None: run.inference_steps
    face: str | None = None  # None/"": the largest face; "left", "right", a track id, "all" (all: not with avatar_cache)
    max_seconds: float | None = None
    solver: str | None = None  # sampler options (config.run.scheduler / deepcache_interval) when supported
    deepcache_interval: int | None = None
    overlap: int | None = None
    crf: int = 18
    preset: str = "medium"
    progress: bool = False
    on_chunk: Callable[[int, int, np.ndarray], None] | None = None


@dataclasses.dataclass(frozen=True)
class ServiceResult:
    output_path: str
    num_frames: int
    duration: float
    seconds: float
    looped: bool
    frames_kept: int
    avatar: str  # "off" | "hit" | "stored" | "not stored"
    compiles: int  # XLA compilations during this job
    seed: int
    guidance: float
    steps: int


def sampler_support() -> dict[str, bool]:
    """Which sampler options this build supports (the app and CLI show only those)."""
    from lipsync_jax.diffusion import sample_chunk
    from lipsync_jax.pipeline import InferenceJob

    params = inspect.signature(sample_chunk).parameters
    fields = {f.name for f in dataclasses.fields(InferenceJob)}
    return {"solver": "solver" in params, "deepcache_interval": "deepcache_interval" in params,
            "overlap": "overlap" in fields}


def solver_choices() -> list[str]:
    try:
        from lipsync_jax.diffusion.sampler import SOLVERS  # type: ignore[attr-defined]
        return list(SOLVERS)
    except ImportError:
        return ["ddim", "dpmsolver++"]


class LipsyncService:
    def __init__(self, config, models, *, chunk_batch: int | None = None, avatar_cache: str | None = None,
                 face_backend: str = "mediapipe", fsdp: int | None = None):
        from lipsync_jax.pipeline import EngineOptions
        from lipsync_jax.pipeline.avatar_cache import AvatarCache

        watch_compiles()
        self.config = config
        self.models = models
        self.face_backend = face_backend
        self.chunk_batch = chunk_batch
        self.fsdp = fsdp  # EngineOptions.fsdp: weights split over groups of this many devices (None: automatic)
        self.avatar_cache = AvatarCache(avatar_cache) if avatar_cache else None
        self.fps = float(config.data.video_fps)
        self.defaults = dict(seed=int(config.run.seed), guidance=float(config.run.guidance_scale),
                             steps=int(config.run.inference_steps),
                             solver=str(config.run.get("scheduler", "ddim")),
                             deepcache_interval=int(config.run.get("deepcache_interval", 0)),
                             overlap=int(config.run.get("overlap", 0)))
        self.support = sampler_support()
        self._engines: dict[tuple, Any] = {}
        self._engine_options = EngineOptions
        self._lock = threading.Lock()
        self._job_face_pass: Callable | None = None  # the running job's face pass factory
        self.jobs_done = 0
        self._vae_fingerprint: str | None = None

    @classmethod
    def from_config(cls, config_path: str, *, overrides=(), unet_checkpoint: str = "", vae_checkpoint: str = "",
                    whisper_checkpoint: str = "", random_init: bool = False, dtype: str | None = None,
                    seed: int | None = None, **kwargs) -> LipsyncService:
        from lipsync_jax.config_utils import load_config

        config = load_config(config_path, overrides=list(overrides))
        return cls.from_loaded_config(config, unet_checkpoint=unet_checkpoint, vae_checkpoint=vae_checkpoint,
                                      whisper_checkpoint=whisper_checkpoint, random_init=random_init, dtype=dtype,
                                      seed=seed, **kwargs)

    @classmethod
    def from_loaded_config(cls, config, *, unet_checkpoint: str = "", vae_checkpoint: str = "",
                           whisper_checkpoint: str = "", random_init: bool = False, dtype: str | None = None,
                           seed: int | None = None, **kwargs) -> LipsyncService:
        import jax
        import jax.numpy as jnp

        from lipsync_jax.pipeline import build_models

        watch_compiles()
        name = dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
        models = build_models(config, unet_checkpoint=unet_checkpoint, vae_checkpoint=vae_checkpoint,
                              whisper_checkpoint=whisper_checkpoint, dtype=jnp.dtype(name), random_init=random_init,
                              seed=int(config.run.seed if seed is None else seed))
        return cls(config, models, **kwargs)

    # ------------------------------------------------------------------ engine and face pass
    def engine(self, sampler_options: Mapping[str, Any]):
        from lipsync_jax.pipeline.avatar_program import AvatarEngine  # a LipsyncEngine until moments are set

        key = tuple(sorted(sampler_options.items()))
        if key not in self._engines:
            options = self._engine_options(chunk_batch=self.chunk_batch, sampler_options=dict(sampler_options),
                                           fsdp=self.fsdp)
            self._engines[key] = AvatarEngine(self.models, options, face_pass_factory=self._face_pass)
        return self._engines[key]

    def vae_fingerprint(self) -> str:
        """Which VAE (weights, dtype, resolution) made an avatar entry's moments."""
        from lipsync_jax.pipeline.avatar_cache import tree_fingerprint

        if self._vae_fingerprint is None:
            self._vae_fingerprint = (f"{tree_fingerprint(self.models.vae_params)}-{self.models.dtype}-"
                                     f"{self.models.resolution}")
        return self._vae_fingerprint

    def add_moments(self, track):
        """The VAE moments of a track's faces (what later jobs reuse instead of encoding)."""
        import dataclasses as _dc

        from lipsync_jax.pipeline.avatar_program import encode_moments

        return _dc.replace(track, latents=encode_moments(self.models, track.faces),
                           vae_fingerprint=self.vae_fingerprint())

    def _face_pass(self, resolution: int, backend: str, source: str):
        if self._job_face_pass is not None:
            return self._job_face_pass(resolution, backend, source)
        return None  # the engine's own per-job face pass (InferenceJob.face: "largest", "all", an id, ...)

    def _base_face_pass(self, face: str | None) -> Callable:
        face = face or "largest"  # as the engine: one person, the largest (today's tracker for one face)

        def chosen(resolution: int, backend: str, source: str):
            from lipsync_jax.face import choose_track, face_pass_for_tracks, find_face_tracks
            from lipsync_jax.pipeline import default_face_pass

            tracks = find_face_tracks(source, fps=self.fps, backend=backend, progress=False).tracks
            if len(tracks) <= 1:  # one person (or none found): the single-face tracker, as before
                if tracks:
                    choose_track(tracks, face)  # an id that is not there still fails
                return default_face_pass(resolution, backend, source)
            return face_pass_for_tracks(resolution, backend, source, list(tracks), face)
        return chosen

    def sampler_options(self, job: ServiceJob) -> dict[str, Any]:
        options: dict[str, Any] = {}
        solver = job.solver or self.defaults["solver"]
        interval = self.defaults["deepcache_interval"] if job.deepcache_interval is None else job.deepcache_interval
        if self.support["solver"] and solver != "ddim":
            options["solver"] = solver
        elif solver != "ddim":
            raise ValueError(f"sampler {solver!r} is not available in this build")
        if self.support["deepcache_interval"] and interval > 1:
            options["deepcache_interval"] = int(interval)
        elif interval > 1:
            raise ValueError("DeepCache is not available in this build")
        return options

    # ------------------------------------------------------------------ jobs
    def check(self, job: ServiceJob):
        from lipsync_jax.pipeline import check_inputs

        return check_inputs(job.video, job.audio, job.output)

    def compile(self, steps: int | None = None, guidance: float | None = None, **sampler: Any) -> None:
        """Compile (or load from the persistent cache) the device program now (server warm-up)."""
        job = ServiceJob("", "", "", steps=steps, guidance=guidance, **sampler)
        self.engine(self.sampler_options(job)).compile(int(steps or self.defaults["steps"]),
                                                      float(self.defaults["guidance"] if guidance is None else guidance))

    def run(self, job: ServiceJob, *, timer=None) -> ServiceResult:
        """Check, then lip-sync one job (waits for the device lock). Raises ``InputError`` and friends.
        ``timer``: a ``StageTimer`` to collect the engine's per-stage times (benchmarks)."""
        checked = self.check(job)  # outside the lock: cheap, and bad files fail at once
        with self._lock:
            return self._run_locked(job, checked, timer)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def _run_locked(self, job: ServiceJob, checked, timer=None) -> ServiceResult:
        from lipsync_jax.pipeline import InferenceJob
        from lipsync_jax.pipeline.avatar_cache import AvatarCacheMiss, CachedFacePass, RecordingFacePass

        seed = self.defaults["seed"] if job.seed is None else int(job.seed)
        guidance = self.defaults["guidance"] if job.guidance is None else float(job.guidance)
        steps = self.defaults["steps"] if job.steps is None else int(job.steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        overlap = self.defaults["overlap"] if job.overlap is None else int(job.overlap)
        if self.support["solver"]:  # one clear line for a bad option, before any work
            from lipsync_jax.diffusion import validate_sampler_options

            interval = self.defaults["deepcache_interval"] if job.deepcache_interval is None else job.deepcache_interval
            validate_sampler_options(job.solver or self.defaults["solver"], int(interval), overlap,
                                     self.models.num_frames, steps)
        engine = self.engine(self.sampler_options(job))
        extra = {}
        if self.support["overlap"] and overlap:
            extra["overlap"] = overlap
        elif overlap:
            raise ValueError("overlapping chunks are not available in this build")
        inference = InferenceJob(job.video, job.audio, job.output, num_steps=steps, guidance_scale=guidance,
                                 seed=seed, face_backend=self.face_backend, fps=self.fps, max_seconds=job.max_seconds,
                                 crf=job.crf, preset=job.preset, progress=job.progress, on_chunk=job.on_chunk,
                                 face=job.face or "largest", **extra)
        base = self._base_face_pass(job.face)
        avatar, recorder = "off", None
        before = compile_count()
        begin = time.perf_counter()
        try:
            if self.avatar_cache is not None:
                key = self.avatar_cache.key(job.video, resolution=self.models.resolution, fps=self.fps,
                                            backend=self.face_backend, face=job.face)
                track = self.avatar_cache.load(key)
                total = checked.video.frame_count_at(self.fps)
                audio_seconds = checked.audio_duration if job.max_seconds is None else min(checked.audio_duration,
                                                                                            job.max_seconds)
                needed = min(total, int(round(audio_seconds * self.fps)))  # a short guess raises AvatarCacheMiss
                if track is not None and track.covers(needed):
                    self._job_face_pass = lambda resolution, backend, source: CachedFacePass(track, source)
                    fresh = track.latents is not None and track.vae_fingerprint == self.vae_fingerprint()
                    if fresh:
                        engine.use_moments(track.faces, track.latents)
                    try:
                        result = engine.run(inference, checked=checked, timer=timer)
                        avatar = "hit"
                    except AvatarCacheMiss:
                        track = None
                    finally:
                        engine.clear_moments()
                    if avatar == "hit" and not fresh:  # entry made by another VAE: add this one's moments
                        self.avatar_cache.store(key, self.add_moments(track))
                if avatar != "hit":
                    def recording(resolution: int, backend: str, source: str):
                        nonlocal recorder
                        recorder = RecordingFacePass(base(resolution, backend, source), self.avatar_cache, key,
                                                     expected_frames=total, on_store=self.add_moments)
                        return recorder
                    self._job_face_pass = recording
                    result = engine.run(inference, checked=checked, timer=timer)
                    avatar = "stored" if recorder is not None and recorder.store() else "not stored"
            else:
                self._job_face_pass = None  # the engine follows inference.face
                result = engine.run(inference, checked=checked, timer=timer)
        finally:
            self._job_face_pass = None
        self.jobs_done += 1
        return ServiceResult(output_path=result.output_path, num_frames=result.num_frames, duration=result.duration,
                             seconds=time.perf_counter() - begin, looped=result.looped,
                             frames_kept=result.frames_kept, avatar=avatar, compiles=compile_count() - before,
                             seed=seed, guidance=guidance, steps=steps)
