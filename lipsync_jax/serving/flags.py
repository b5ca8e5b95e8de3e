"""The command-line flags every serving door shares (infer.py, the batch CLI, the web app, the live
server), defined ONCE, and their translation into the job description (pipeline/job.py).

Values that belong to a job (steps, guidance, seed, ...) are defined as text flags and parsed by
pipeline/job.py, so a bad value gets the same one-line message here as in a CSV row, an HTTP
form or a live-protocol message. Defaults come from the config (``--config``, overridable field
by field: ``--config.run.inference_steps=10``).
"""

from __future__ import annotations

import os
from typing import Any

from absl import flags

from lipsync_jax import cli_flags
from lipsync_jax.accelerators import TARGETS
from lipsync_jax.pipeline.job import JobDefaults, RunOptions, parse_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "unet", "stage2.py")
SAMPLING_FLAGS = {"steps": "steps", "guidance": "guidance", "scheduler": "solver",
                  "deepcache_interval": "deepcache_interval", "overlap": "overlap", "audio_windows": "audio_windows"}
JOB_FLAGS = ("seed", "face", "face_audio", "max_seconds", "crf", "preset")


def define_model_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """--config (+ --config.* overrides, --sweep_index), the three checkpoints, --random_init."""
    cli_flags.define_config_flags(default_config=DEFAULT_CONFIG, flag_values=fv)
    flags.DEFINE_string("checkpoint", "checkpoints/jax/unet", "Converted UNet folder (or latentsync_unet.pt).",
                        flag_values=fv)
    flags.DEFINE_string("vae_checkpoint", "checkpoints/jax/vae", "Converted VAE folder (or the sd-vae-ft-mse "
                        "folder).", flag_values=fv)
    flags.DEFINE_string("whisper_checkpoint", "checkpoints/jax/whisper", "Converted Whisper folder (or "
                        "whisper/tiny.pt).", flag_values=fv)
    flags.DEFINE_bool("random_init", False, "Random weights for every network (smoke tests and benchmarks: the "
                      "output is meaningless).", flag_values=fv)


def define_sampling_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """How to sample (defaults: the config's run section). Details: docs/inference.md."""
    text = lambda name, help_text: flags.DEFINE_string(name, None, help_text, flag_values=fv)  # noqa: E731
    text("steps", "Denoising steps, a whole number >= 1 (default: run.inference_steps, 20; a student "
                  "checkpoint's own steps).")
    text("guidance", "Audio guidance scale, >= 0; <= 1 disables guidance (default: run.guidance_scale, 1.5; a "
                     "student checkpoint has its scale distilled in and refuses > 1).")
    text("scheduler", "Sampler: ddim (LatentSync), dpmsolver++ or lcm (a consistency-distilled student; "
                      "default: run.scheduler, lcm for a student checkpoint).")
    text("deepcache_interval", "DeepCache: the full UNet every N steps, 0/1 = off (default: run.deepcache_interval).")
    text("overlap", "Frames shared by consecutive 16-frame windows, 0..15 (one face, one device; default: "
                    "run.overlap).")
    text("audio_windows", "Whisper's 30 s windows: sliding (overlapping, no lip glitch every 30 s; equal to "
                          "LatentSync up to 30 s of audio) or latentsync (disjoint: its exact features on long "
                          "audio) (default: run.audio_windows, sliding).")


def define_job_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """What to sync besides the files: face choice, seed, length, x264 quality."""
    text = lambda name, help_text: flags.DEFINE_string(name, None, help_text, flag_values=fv)  # noqa: E731
    text("seed", "Random seed of the start noise and VAE samples, 0..4294967295 (default: run.seed).")
    text("face", "Who to lip-sync with several people: largest (default), left, right, a track id from "
                 "--list_faces, all, or ids such as 0,1.")
    text("faces", "all (or ID,ID,...): lip-sync several face tracks to the audio (the same as --face all).")
    text("face_audio", "ID=path[,ID=path...]: each listed face (a track id, left, right or largest) gets its own "
                       "audio; --audio is the soundtrack and sets the length.")
    text("max_seconds", "Only lip-sync the first this many seconds of the audio (>= 0.04).")
    text("crf", "H.264 quality, x264 CRF 0..51 (lower is better; default 18 as LatentSync).")
    text("preset", "x264 preset, ultrafast ... veryslow (default medium).")


def define_run_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Where to run. Details: docs/inference.md (memory budget, speed and compile cache)."""
    text = lambda name, help_text: flags.DEFINE_string(name, None, help_text, flag_values=fv)  # noqa: E731
    text("chunk_batch", "16-frame chunks per device per program call (default: 1 on CPU, 2 on GPU/TPU).")
    text("fsdp", "Split the UNet/VAE weights over groups of N local devices (default: automatic).")
    text("max_vram", "Device-memory budget in GB (GiB): the memory planner picks settings that fit it "
                     "(default: the config's run.max_vram_gb, 0 = no limit).")
    text("devices", "Use the first N local devices (default: all).")
    text("plan_for", f"Make the memory plan for this accelerator instead of the local devices, print it and exit "
                     f"(no weights loaded, nothing run): {', '.join(TARGETS)}. Footprints from XLA's compiler for it "
                     f"(pip install -r requirements-aot.txt), else the CPU-modelled estimate; --max_vram defaults to "
                     f"its memory (docs/aot.md).")
    flags.DEFINE_bool("plan_only", False, "Print the memory plan this run would use (chunk batch, VAE slices, "
                      "attention, Whisper's place, estimated GB) and exit without loading weights or running.",
                      flag_values=fv)
    flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"], "Compute dtype (default: bfloat16 on GPU/TPU, "
                      "float32 on CPU).", flag_values=fv)
    flags.DEFINE_enum("face_backend", "mediapipe", ["mediapipe", "insightface"], "Face landmarks: MediaPipe "
                      "FaceMesh (bundled) or insightface (needs its models).", flag_values=fv)
    text("compile_cache", "Persistent XLA compilation cache folder (default: $JAX_COMPILATION_CACHE_DIR or "
                          "~/.cache/lipsync_jax/xla).")
    flags.DEFINE_bool("nocompile_cache", False, "Do not use the persistent compilation cache.", flag_values=fv)
    flags.DEFINE_bool("verbose", False, "Show the libraries' own log lines (XLA, MediaPipe, ...).", flag_values=fv)


def config_and_defaults(fv: flags.FlagValues = flags.FLAGS) -> tuple[Any, JobDefaults]:
    """The config and the job defaults: the config's, or a student checkpoint's (--checkpoint with
    "student" metadata: scheduler lcm at its steps, guidance distilled in; JobDefaults)."""
    config = cli_flags.resolved_config(fv)
    return config, JobDefaults.from_config(config, unet_checkpoint=fv["checkpoint"].value,
                                           random_init=fv["random_init"].value)


def sampling_values(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """{Sampling field: raw flag value} for the sampling flags this command defines."""
    return {field: fv[name].value for name, field in SAMPLING_FLAGS.items() if name in fv}


def job_values(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """{SyncJob field: raw flag value}; --faces is --face (one clear error when both are given)."""
    values = {name: fv[name].value for name in JOB_FLAGS if name in fv}
    given = [f"--{name}" for name in ("face", "faces", "face_audio") if name in fv and fv[name].value]
    if len(given) > 1:
        raise ValueError(f"use one of --face, --faces, --face_audio (got {', '.join(given)})")
    if "faces" in fv and fv["faces"].value:
        values["face"] = fv["faces"].value
    return values


def run_options(fv: flags.FlagValues, defaults: JobDefaults) -> RunOptions:
    """``RunOptions`` from the run flags (the config's run.max_vram_gb when --max_vram is not given)."""
    values = {name: fv[name].value for name in ("chunk_batch", "fsdp", "max_vram", "devices", "dtype",
                                                "face_backend", "plan_for", "plan_only") if name in fv}
    values["compile_cache"] = "" if fv["nocompile_cache"].value else fv["compile_cache"].value
    return parse_run(values, defaults)


def model_sources(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The ``LipsyncService.from_config`` keyword arguments of the model flags."""
    return dict(unet_checkpoint=fv["checkpoint"].value, vae_checkpoint=fv["vae_checkpoint"].value,
                whisper_checkpoint=fv["whisper_checkpoint"].value, random_init=fv["random_init"].value)
