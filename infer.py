"""Lip-sync a video to an audio track with LatentSync (JAX).

    python infer.py --video input.mp4 --audio speech.wav --output out.mp4 \\
        --checkpoint checkpoints/jax/unet --vae_checkpoint checkpoints/jax/vae \\
        --whisper_checkpoint checkpoints/jax/whisper [--config configs/unet/stage2.py] \\
        [--steps 20 --guidance 1.5 --seed 1247 --dtype bfloat16 --face_backend mediapipe]

Checkpoints are folders written by ``python -m lipsync_jax.convert {unet,vae,whisper}``; an
original PyTorch checkpoint (latentsync_unet.pt, whisper/tiny.pt, the sd-vae-ft-mse folder) is
converted on the fly. ``--random_init`` runs with random weights (smoke tests, benchmarks: the
output is meaningless), e.g. with ``--config configs/unet/tiny.py``.

The video is read at the config's ``data.video_fps`` (25), looped ping-pong when the audio is
longer, cut when it is shorter; frames where no face is found are kept as they are. The output
is an H.264 mp4 with the audio as AAC, as long as the audio. Errors print one line and exit 1;
Ctrl-C / SIGTERM stop the run, delete its temp files, write no output and exit 130 / 143.

Several people in the video: a detection pre-pass finds the face tracks (ids as printed by
``--list_faces``, which prints each track's id, frames, mean box and a thumbnail path and
generates nothing); ``--face largest|left|right|ID`` lip-syncs one person for the whole video
(default: the largest mean face; a one-face video gives exactly the single-face output),
``--faces all`` every person to the audio, ``--face_audio ID=a.wav,ID=b.wav`` each listed person
their own audio (``--audio`` is then the soundtrack). Several faces are generated in the same
device-program calls and pasted back one after the other (lipsync_jax/pipeline/face_choice.py).

Memory: on a GPU JAX grows its memory on demand (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` set at
startup unless you set an ``XLA_PYTHON_CLIENT_*`` variable; lipsync_jax/device_memory.py);
``--max_vram GB`` fits the program into a budget (lipsync_jax/pipeline/memory.py).

Speed: ``--chunk_batch N`` chunks of 16 frames per device per device-program call (default 1 on
CPU, 2 on GPU/TPU), all local devices used (chunk batches split over them; ``--fsdp N`` splits the
weights over groups of N devices instead of a copy per device, chosen automatically when they do
not fit one device, lipsync_jax/pipeline/placement.py); compiled programs are kept in a persistent cache
(``--compile_cache DIR``, default ~/.cache/lipsync_jax/xla or $JAX_COMPILATION_CACHE_DIR;
``--nocompile_cache`` to disable), so a second run starts without compiling.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

from absl import app, flags

from lipsync_jax.device_memory import configure_gpu_memory

configure_gpu_memory()  # before jax starts: grow on demand instead of preallocating 75% of the GPU

from lipsync_jax import cli_flags  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "unet", "stage2.py")

flags.DEFINE_string("video", None, "Input video with a face (any fps/resolution; read at data.video_fps).")
flags.DEFINE_string("audio", None, "Input audio (wav, mp3, m4a, ... or a video's sound track).")
flags.DEFINE_string("output", None, "Output .mp4 (written to a temp file and moved there on success).")
flags.DEFINE_string("checkpoint", "checkpoints/jax/unet", "Converted UNet folder (or latentsync_unet.pt).")
flags.DEFINE_string("vae_checkpoint", "checkpoints/jax/vae", "Converted VAE folder (or the sd-vae-ft-mse folder).")
flags.DEFINE_string("whisper_checkpoint", "checkpoints/jax/whisper", "Converted Whisper folder (or whisper/tiny.pt).")
flags.DEFINE_integer("steps", None, "DDIM steps (default: the config's run.inference_steps, 20).", lower_bound=1)
flags.DEFINE_string("scheduler", None, "Sampler: ddim (LatentSync) or dpmsolver++ (DPM-Solver++ 2M, e.g. with "
                    "--steps 10) (default: the config's run.scheduler).")
flags.DEFINE_integer("deepcache_interval", None, "DeepCache: full UNet every N steps, the shallow branch between "
                     "(0/1 = off; LatentSync's --enable_deepcache is 3) (default: run.deepcache_interval).")
flags.DEFINE_integer("overlap", None, "Frames shared by consecutive 16-frame windows (0..15; 0 = LatentSync's "
                     "disjoint chunks; K costs 16/(16-K) UNet work; one face, one device) (default: run.overlap).")
flags.DEFINE_float("guidance", None, "Audio guidance scale; <= 1 disables guidance (default: run.guidance_scale, 1.5).")
flags.DEFINE_integer("seed", None, "Random seed of the start noise and VAE samples (default: run.seed).")
flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"],
                  "Compute dtype of the UNet and VAE (default: bfloat16 on GPU/TPU, float32 on CPU).")
flags.DEFINE_enum("face_backend", "mediapipe", ["mediapipe", "insightface"],
                  "Face landmarks: MediaPipe FaceMesh (bundled) or insightface (LatentSync's, needs its models).")
flags.DEFINE_string("face", None, "Who to lip-sync in a video with several people: largest (default: the largest mean "
                    "face over the clip), left, right or a track id printed by --list_faces.")
flags.DEFINE_string("faces", None, "all: lip-sync every face track to the audio (or ID,ID,...: those tracks).")
flags.DEFINE_string("face_audio", None, "ID=path[,ID=path...]: each listed face (track id, left, right or largest) "
                    "gets its own audio (dialogue dubbing); --audio is the output's soundtrack and sets its length.")
flags.DEFINE_bool("list_faces", False, "Print the video's face tracks (id, frames, mean box, thumbnail path) and "
                  "exit without generating (needs only --video).")
flags.DEFINE_string("thumbs", None, "With --list_faces: folder for one thumbnail per face track (default: "
                    "<video name>_faces beside --output, or in the current folder).")
flags.DEFINE_bool("random_init", False, "Random weights for every network (smoke tests/benchmarks; meaningless output).")
flags.DEFINE_float("max_seconds", None, "Only lip-sync the first this many seconds of the audio.", lower_bound=0.04)
flags.DEFINE_integer("crf", 18, "H.264 quality (x264 CRF; lower is better, 18 as LatentSync).", lower_bound=0, upper_bound=51)
flags.DEFINE_string("preset", "medium", "x264 preset (ultrafast ... veryslow).")
flags.DEFINE_integer("chunk_batch", None, "Chunks (16 frames each) per device per device-program call "
                     "(default: 1 on CPU, 2 on GPU/TPU); the output does not depend on it.", lower_bound=1)
flags.DEFINE_integer("fsdp", None, "Split the UNet/VAE weights over groups of N local devices (N divides the device "
                     "count; chunk batches go over devices / N groups) instead of a full copy per device "
                     "(default: 1 unless the weights do not fit --max_vram or the device's memory).", lower_bound=1)
flags.DEFINE_float("max_vram", None, "Device-memory budget in GB (GiB): chunk_batch, VAE slices, the attention backend "
                   "and Whisper's place are chosen to fit it, or one error names the smallest footprint "
                   "(default: the config's run.max_vram_gb, 0 = no limit).", lower_bound=0.0)
flags.DEFINE_string("compile_cache", None, "Persistent XLA compilation cache folder (default: "
                    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/lipsync_jax/xla).")
flags.DEFINE_bool("nocompile_cache", False, "Do not use the persistent compilation cache.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("traceback", False, "On an error, print the full traceback (for bug reports).")
flags.DEFINE_string("batch", None, "Run the jobs of a CSV file (columns video, audio, output; optional seed, "
                    "guidance, steps, face) with the models compiled once; see lipsync_jax/batch.py.")
flags.DEFINE_string("avatar_cache", None, "Folder of cached face tracks: a video's alignment is stored on the "
                    "first run and replayed by later runs on the same video (lipsync_jax/pipeline/avatar_cache.py).")
flags.DEFINE_bool("force", False, "With --batch: redo jobs whose output exists (default: skip them, i.e. resume).")
flags.DEFINE_string("summary_csv", None, "With --batch: also write the summary table as CSV here.")
flags.register_multi_flags_validator(
    ["video", "audio", "output", "batch", "list_faces"],
    lambda v: bool(v["batch"]) or (v["list_faces"] and bool(v["video"])) or all(v[k] for k in ("video", "audio", "output")),
    message="--video, --audio and --output are required (or --batch JOBS.csv, or --list_faces --video V)")
cli_flags.define_config_flags(default_config=DEFAULT_CONFIG)

FLAGS = flags.FLAGS
STARTED = time.perf_counter()

RANDOM_INIT_WARNING = ("WARNING: --random_init: the UNet, VAE and Whisper have RANDOM weights; the output video "
                       "is meaningless (use it only for smoke tests and benchmarks).")


def _dtype(name: str | None):
    import jax
    import jax.numpy as jnp

    if name is None:
        name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return jnp.dtype(name)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every clean-up (temp files, ffmpeg) runs."""


def _on_stop_signal(signum, frame):
    """The first SIGTERM / Ctrl-C stops the run; later ones (a second Ctrl-C, a supervisor that
    signals twice) are ignored so they cannot cut the clean-up short and leave temp files."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run() -> None:
    from lipsync_jax.pipeline import (EngineOptions, InferenceOptions, build_models, check_inputs,
                                      enable_compile_cache, run_inference)
    from lipsync_jax.pipeline.compile_cache import compile_cache_stats
    from lipsync_jax.pipeline.placement import check_fsdp

    if FLAGS.fsdp is not None:  # one line before any work, in every mode
        check_fsdp(FLAGS.fsdp, len(jax_devices()))
    if FLAGS.batch:  # many jobs, models compiled once (lipsync_jax/batch.py)
        from lipsync_jax.batch import main_with_flags
        sys.exit(main_with_flags(FLAGS.batch, FLAGS))
    if FLAGS.list_faces:  # the face tracks only, nothing generated
        return list_faces()
    face, face_audio = face_options()
    if FLAGS.avatar_cache and (FLAGS.faces or FLAGS.face_audio):
        raise ValueError("--faces / --face_audio do not work with --avatar_cache (it caches one face per video)")
    if FLAGS.avatar_cache:  # one job through the service, face track from/to the avatar cache
        from lipsync_jax.batch import run_one_with_flags
        return run_one_with_flags(FLAGS)
    config = cli_flags.resolved_config(FLAGS)
    sampler = sampler_flags(config)  # before any heavy work, as the input checks
    checked = check_inputs(FLAGS.video, FLAGS.audio, FLAGS.output)
    fsdp = fsdp_flag(sampler["overlap"])
    if not FLAGS.nocompile_cache:  # before the first compilation
        enable_compile_cache(FLAGS.compile_cache)
    if FLAGS.random_init:
        print(RANDOM_INIT_WARNING, file=sys.stderr, flush=True)
    seed = int(config.run.seed if FLAGS.seed is None else FLAGS.seed)
    dtype = _dtype(FLAGS.dtype)
    models = build_models(config, unet_checkpoint=FLAGS.checkpoint, vae_checkpoint=FLAGS.vae_checkpoint,
                          whisper_checkpoint=FLAGS.whisper_checkpoint, dtype=dtype,
                          random_init=FLAGS.random_init, seed=seed)
    options = InferenceOptions(
        video_path=FLAGS.video, audio_path=FLAGS.audio, output_path=FLAGS.output,
        num_steps=int(config.run.inference_steps if FLAGS.steps is None else FLAGS.steps),
        guidance_scale=float(config.run.guidance_scale if FLAGS.guidance is None else FLAGS.guidance),
        seed=seed, face_backend=FLAGS.face_backend, fps=float(config.data.video_fps),
        max_seconds=FLAGS.max_seconds, crf=FLAGS.crf, preset=FLAGS.preset, progress=FLAGS.progress,
        face=face, face_audio=face_audio, overlap=sampler["overlap"])
    max_vram = FLAGS.max_vram if FLAGS.max_vram is not None else float(config.run.get("max_vram_gb", 0.0) or 0.0)
    engine_options = EngineOptions(chunk_batch=FLAGS.chunk_batch, max_vram_gb=max_vram or None,
                                   sampler_options=sampler["sampler_options"], fsdp=fsdp,
                                   devices=jax_devices()[:1] if sampler["overlap"] else None)
    result = run_inference(models, options, checked=checked, engine_options=engine_options)
    notes = []
    if result.looped:
        notes.append(f"video looped ping-pong ({result.num_source_frames} source frames)")
    if result.frames_kept:
        notes.append(f"{result.frames_kept} frames without a face kept unchanged")
    if result.face_tracks:
        notes.append(f"face track{'s' * (len(result.face_tracks) > 1)} {', '.join(map(str, result.face_tracks))}")
    print(f"wrote {result.output_path}: {result.num_frames} frames at {options.fps:g} fps, "
          f"{result.duration:.2f} s, {dtype.name}" + (f" ({'; '.join(notes)})" if notes else ""))
    stats = compile_cache_stats()
    cache = ("compile cache off" if FLAGS.nocompile_cache else
             f"{stats['hits']} of {stats['requests']} compiled programs loaded from the compile cache")
    first = f"{result.time_to_first_frame:.1f} s" if result.time_to_first_frame is not None else "-"
    print(f"time to first frame {first}, total {time.perf_counter() - STARTED:.1f} s "
          f"({result.num_frames / result.seconds:.2f} frames/s in the engine); {cache}")
    if FLAGS.random_init:
        print(RANDOM_INIT_WARNING, file=sys.stderr)


def sampler_flags(config) -> dict:
    """--scheduler / --deepcache_interval / --overlap (defaults: config.run), checked (one line):
    {"sampler_options": the engine's sample_chunk options (empty for LatentSync's loop),
    "overlap": K}."""
    from lipsync_jax.diffusion import SamplerOptionError, validate_sampler_options

    pick = lambda flag, field, default: (getattr(FLAGS, flag) if getattr(FLAGS, flag) is not None  # noqa: E731
                                         else config.run.get(field, default))
    solver = str(pick("scheduler", "scheduler", "ddim")).strip().lower()
    interval, overlap = int(pick("deepcache_interval", "deepcache_interval", 0)), int(pick("overlap", "overlap", 0))
    steps = int(config.run.inference_steps if FLAGS.steps is None else FLAGS.steps)
    try:
        validate_sampler_options(solver, interval, overlap, num_frames=int(config.data.get("num_frames", 16)),
                                 num_steps=steps)
    except SamplerOptionError as error:
        raise ValueError(f"sampler options: {error}") from None
    if overlap and (FLAGS.faces or FLAGS.face_audio):
        raise ValueError("--overlap lip-syncs one face: not with --faces / --face_audio")
    options = {}
    if solver != "ddim":
        options["solver"] = solver
    if interval > 1:  # 0 and 1 are the same (off): the very same compiled program
        options["deepcache_interval"] = interval
    return {"sampler_options": options, "overlap": overlap}


def fsdp_flag(overlap: int) -> int | None:
    """--fsdp (checked against the local devices at the start of ``run``) for one job."""
    if FLAGS.fsdp is not None and overlap and FLAGS.fsdp > 1:
        raise ValueError(f"--overlap runs on one device: not with --fsdp {FLAGS.fsdp}")
    return FLAGS.fsdp


def jax_devices() -> list:
    import jax

    return list(jax.local_devices())


def face_options() -> tuple[str, dict[str, str] | None]:
    """(job.face, job.face_audio) from --face / --faces / --face_audio (one clear error if mixed)."""
    from lipsync_jax.pipeline.face_choice import parse_face_audio

    given = [name for name in ("face", "faces", "face_audio") if getattr(FLAGS, name)]
    if len(given) > 1:
        raise ValueError(f"use one of --face, --faces, --face_audio (got {', '.join('--' + n for n in given)})")
    if FLAGS.faces and FLAGS.faces.strip().lower() != "all" and not all(
            part.strip().isdigit() for part in FLAGS.faces.split(",")):
        raise ValueError(f"--faces {FLAGS.faces}: use all or track ids such as 0,1 (see --list_faces)")
    return (FLAGS.faces or FLAGS.face or "largest"), (parse_face_audio(FLAGS.face_audio) or None)


def list_faces() -> None:
    """``--list_faces``: the detection pre-pass the run would use; one line per face track."""
    from lipsync_jax.face.list_faces import list_faces as find_and_list
    from lipsync_jax.face.tracks import CHOICES
    from lipsync_jax.pipeline.inputs import check_video

    if not FLAGS.video:
        raise ValueError("--list_faces needs --video")
    check_video(FLAGS.video)
    config = cli_flags.resolved_config(FLAGS)
    fps = float(config.data.video_fps)
    stem = os.path.splitext(os.path.basename(FLAGS.video))[0]
    thumbs = FLAGS.thumbs or os.path.join(os.path.dirname(FLAGS.output) if FLAGS.output else ".", f"{stem}_faces")
    max_frames = None if FLAGS.max_seconds is None else max(1, int(round(FLAGS.max_seconds * fps)))
    listing = find_and_list(FLAGS.video, thumbs, fps=fps, backend=FLAGS.face_backend, max_frames=max_frames,
                            progress=FLAGS.progress)
    print("\n".join(listing.lines()))
    print(f"choose with --face {'|'.join(CHOICES)}|ID, --faces all, or --face_audio ID=audio,ID=audio")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job keeps ignoring Ctrl-C
        signal.signal(signal.SIGINT, _on_stop_signal)
    try:
        run()
    except (KeyboardInterrupt, Terminated) as stop:
        name, code = ("SIGTERM", 143) if isinstance(stop, Terminated) else ("Ctrl-C", 130)
        print(f"interrupted ({name}): stopped, temp files deleted, no output written", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)  # worker threads may sit in device calls: do not wait for them
    except Exception as error:  # one clear line instead of a traceback
        if FLAGS.traceback:
            traceback.print_exc()
        known = error.__class__.__module__.startswith("lipsync_jax") or isinstance(error, (OSError, ValueError))
        message = str(error) if known else f"{type(error).__name__}: {error} (rerun with --traceback for details)"
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # a background compilation may still run in XLA: exiting the interpreter under it aborts


if __name__ == "__main__":
    app.run(main)
