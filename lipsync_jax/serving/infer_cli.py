"""``infer.py`` / ``lipsync-infer``: lip-sync a video to an audio track (or a jobs file, or list the
faces of a video). Usage and every option: docs/inference.md; ``--help`` lists the flags.

    python infer.py --video in.mp4 --audio speech.wav --output out.mp4 [--config configs/unet/stage2.py]

One job goes through the same ``LipsyncService`` as the web app and the batch CLI. Errors print
one line and exit 1; Ctrl-C / SIGTERM stop the run, delete its temp files, write no output and exit
130 / 143 (serving/cli.py).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from lipsync_jax import cli_flags
from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.face.list_faces import list_faces as find_and_list
from lipsync_jax.face.tracks import CHOICES
from lipsync_jax.pipeline.inputs import check_inputs, check_video
from lipsync_jax.pipeline.job import parse_max_seconds, parse_request, parse_sampling
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.batch import run_batch_command, stopped_summary
from lipsync_jax.serving.cli import run_command
from lipsync_jax.serving.plan import print_plan
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService

FLAGS = flags.FLAGS
STARTED = time.perf_counter()
BATCH_STATE: dict = {}  # --batch: the rows and outcomes so far (the summary of a stopped batch)


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_string("video", None, "Input video with a face (any fps/resolution; read at the config's fps).",
                        flag_values=fv)
    flags.DEFINE_string("audio", None, "Input audio (wav, mp3, m4a, ... or a video's sound track).", flag_values=fv)
    flags.DEFINE_string("output", None, "Output .mp4 (written to a temp file and moved there on success).",
                        flag_values=fv)
    shared.define_model_flags(fv)
    shared.define_sampling_flags(fv)
    shared.define_job_flags(fv)
    shared.define_run_flags(fv)
    flags.DEFINE_bool("list_faces", False, "Print the video's face tracks (id, frames, mean box, thumbnail) and exit "
                      "without generating (needs only --video).", flag_values=fv)
    flags.DEFINE_string("faces_dir", None, "With --list_faces: folder for one thumbnail per face track (default: "
                        "<video name>_faces beside --output, else beside the video).", flag_values=fv)
    flags.DEFINE_string("avatar_cache", None, "Folder of cached face tracks: a video's alignment (and its faces' VAE "
                        "encodes) is stored on the first run and replayed by later runs on the same video.",
                        flag_values=fv)
    flags.DEFINE_string("batch", None, "Run the jobs of a CSV/JSONL file (lipsync_jax/serving/batch.py) with the "
                        "models compiled once.", flag_values=fv)
    flags.DEFINE_bool("force", False, "With --batch: redo jobs whose output exists.", flag_values=fv)
    flags.DEFINE_string("summary_csv", None, "With --batch: also write the summary table as CSV here.",
                        flag_values=fv)
    flags.DEFINE_bool("progress", True, "Show progress bars.", flag_values=fv)
    flags.DEFINE_bool("traceback", False, "On an error, print the full traceback (for bug reports).", flag_values=fv)


def run() -> int:
    config, defaults = shared.config_and_defaults(FLAGS)
    run_options = shared.run_options(FLAGS, defaults)
    if run_options.plans_only:  # --plan_only / --plan_for: the memory plan, nothing loaded or run
        return print_plan(config, run_options, parse_sampling(shared.sampling_values(FLAGS), defaults))
    if FLAGS.batch:  # many jobs, models compiled once

        return run_batch_command(FLAGS.batch, FLAGS, BATCH_STATE)
    if FLAGS.list_faces:  # the face tracks only, nothing generated
        return list_faces()
    missing = [f"--{name}" for name in ("video", "audio", "output") if not FLAGS[name].value]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (or --batch JOBS.csv, --list_faces --video V, --plan_only)")
    values = {**shared.job_values(FLAGS), **shared.sampling_values(FLAGS)}
    request = parse_request(FLAGS.video, FLAGS.audio, FLAGS.output, values, defaults)  # every value, before work
    check_inputs(FLAGS.video, FLAGS.audio, FLAGS.output)
    if FLAGS.random_init:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    service = LipsyncService.from_config(config, **shared.model_sources(FLAGS), run=run_options,
                                         avatar_cache=FLAGS.avatar_cache, log=print)
    print(service.describe(), flush=True)
    done = service.run(request, progress=FLAGS.progress)
    result = done.result
    notes = []
    if result.looped:
        notes.append(f"video looped ping-pong ({result.num_source_frames} source frames)")
    if result.frames_kept:
        notes.append(f"{result.frames_kept} frames without a face kept unchanged")
    if result.face_tracks:
        notes.append(f"face track{'s' * (len(result.face_tracks) > 1)} {', '.join(map(str, result.face_tracks))}")
    if done.avatar != "off":
        notes.append(f"avatar cache {done.avatar}")
    print(f"wrote {result.output_path}: {result.num_frames} frames at {service.models.fps:g} fps, "
          f"{result.duration:.2f} s, {service.models.dtype.name}" + (f" ({'; '.join(notes)})" if notes else ""))
    stats = service.monitor.snapshot()
    cache = ("compile cache off" if FLAGS.nocompile_cache else
             f"{stats['cache_hits']} of {stats['cache_requests']} compiled programs loaded from the compile cache")
    first = f"{result.time_to_first_frame:.1f} s" if result.time_to_first_frame is not None else "-"
    print(f"time to first frame {first}, total {time.perf_counter() - STARTED:.1f} s "
          f"({result.num_frames / result.seconds:.2f} frames/s in the engine); {cache}")
    if FLAGS.random_init:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    return 0


def list_faces() -> int:
    """``--list_faces``: the detection pre-pass the run would use; one line per face track."""
    if not FLAGS.video:
        raise ValueError("--list_faces needs --video")
    check_video(FLAGS.video)
    _config, defaults = shared.config_and_defaults(FLAGS)
    max_seconds = parse_max_seconds(FLAGS.max_seconds)
    stem = os.path.splitext(os.path.basename(FLAGS.video))[0]
    beside = os.path.dirname(os.path.abspath(FLAGS.output or FLAGS.video))
    thumbs = FLAGS.faces_dir or os.path.join(beside, f"{stem}_faces")
    max_frames = None if max_seconds is None else max(1, int(round(max_seconds * defaults.fps)))
    listing = find_and_list(FLAGS.video, thumbs, fps=defaults.fps, backend=FLAGS.face_backend, max_frames=max_frames,
                            progress=FLAGS.progress)
    print("\n".join(listing.lines()))
    if listing.thumbnails:
        print(f"thumbnails in {thumbs}")
    print(f"choose with --face {'|'.join(CHOICES)}|ID, --faces all, or --face_audio ID=audio,ID=audio")
    return 0


def main(argv) -> None:
    configure_terminal(verbose=flags.FLAGS.verbose)  # before JAX starts: only our own warnings and errors
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    run_command(run, show_traceback=lambda: FLAGS.traceback, on_stop=lambda: stopped_summary(BATCH_STATE))


def entry() -> None:
    """The console script (``lipsync-infer``) and ``python infer.py``."""
    configure_gpu_memory()  # before jax starts: grow on demand instead of preallocating 75% of the GPU
    define_flags()
    cli_flags.show_in_help(flags.FLAGS)
    app.run(main)
