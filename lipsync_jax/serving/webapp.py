"""Lip sync as a web page and an HTTP API (Gradio): ``python app.py`` / ``lipsync-app``.

    python app.py --config configs/unet/stage2.py --checkpoint checkpoints/jax/unet \\
        --vae_checkpoint checkpoints/jax/vae --whisper_checkpoint checkpoints/jax/whisper \\
        [--avatar_cache avatars/] [--max_vram 8] [--max_queue 8] [--max_seconds 60] --host 127.0.0.1 --port 7860
    python app.py --config configs/unet/tiny.py --random_init     # smoke test: meaningless output

The models are loaded and the engine built (with the memory plan ``--max_vram`` asks for, logged
and returned by ``/stats``) when the server starts; the device program is compiled by the first
request (``--warmup``: at start). One job runs on the device at a time; up to ``--max_queue`` wait
behind it. Every request is parsed by the same code as infer.py's flags (pipeline/job.py), within
the server's limits (``WEB_LIMITS``: what a client can make the server compile is bounded). API
and page: docs/serving.md.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

import gradio as gr
from absl import app, flags

from lipsync_jax import cleanup, cli_flags
from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.media.ffmpeg import run_ffmpeg
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.cli import error_line, is_known, refuse_extra_arguments, run_command
from lipsync_jax.serving.live_server import entry as live_entry
from lipsync_jax.serving.plan import print_plan
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService, ServiceLimits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = [(os.path.join(ROOT, "tests", "data", "assets", f"demo{i}_video.mp4"),
             os.path.join(ROOT, "tests", "data", "assets", f"demo{i}_audio.wav")) for i in (1, 2)]
TITLE = "lipsync-jax: LatentSync lip sync"
SOLVER_CHOICES = ("ddim", "dpmsolver++", "lcm")
STEPS_RANGE, GUIDANCE_RANGE, GUIDANCE_STEP = (1, 50), (1.0, 3.0), 0.1  # the page's sliders: also the API's limits
MAX_DEEPCACHE, MAX_OVERLAP = 5, 8
VIDEO_HEIGHT = 360  # px: a portrait upload must not push the button below the window
PROGRESS_SECONDS = 0.25  # how often the page's progress bar is updated
RESULT_TTL = 300  # seconds a request's uploads and result stay on the server by default
MAX_UPLOAD_MB = 1024  # a few minutes of 1080p video


def web_limits(max_seconds: float | None):
    return ServiceLimits(steps=STEPS_RANGE, guidance=GUIDANCE_RANGE, guidance_decimals=1,
                         max_deepcache_interval=MAX_DEEPCACHE, max_overlap=MAX_OVERLAP, max_seconds=max_seconds)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    shared.define_model_flags(fv)
    shared.define_run_flags(fv)
    flags.DEFINE_string("avatar_cache", None, "Folder of cached face tracks (faster repeat avatars).", flag_values=fv)
    flags.DEFINE_integer("max_queue", 8, "Requests waiting behind the running one.", lower_bound=0, flag_values=fv)
    flags.DEFINE_float("max_seconds", None, "Longest audio a request may lip-sync (longer ones are cut); default: "
                       "no limit.", lower_bound=0.04, flag_values=fv)
    flags.DEFINE_bool("warmup", False, "Compile the default program before serving.", flag_values=fv)
    flags.DEFINE_string("work_dir", None, "Where per-request temp folders go (default: system temp).", flag_values=fv)
    flags.DEFINE_integer("max_upload_mb", MAX_UPLOAD_MB, "Largest upload the server accepts, in MB.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("result_ttl", RESULT_TTL, "Seconds a result stays on the server for the client to fetch "
                         "(then it is deleted; uploads are deleted when their request ends).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.", flag_values=fv)
    flags.DEFINE_integer("port", 7860, "Port to listen on.", lower_bound=1, upper_bound=65535, flag_values=fv)
    flags.DEFINE_bool("live", False, "Serve live mode instead (lipsync_jax/serving/live_server.py).", flag_values=fv)


def parse_flags(argv: list[str]) -> flags.FlagValues:
    """The app's flags parsed from ``argv`` (without the program name) into a fresh FlagValues."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["app.py", *argv])
    return fv


def user_message(error: BaseException, replacements: dict[str, str]) -> str:
    """One line for the page: our errors' own message (upload paths shortened to file names)."""
    text = error_line(error)
    for path, name in replacements.items():
        if path:
            text = text.replace(path, name)
    return text if is_known(error) else f"internal error ({type(error).__name__}); see the server log"


class LipsyncApp:
    """The request handler around one ``LipsyncService`` (see the module docstring). A request works
    in a folder of its own, deleted when it ends, holding links to its uploads (so the server's
    sweep of old files cannot take them away during a long job); the uploads and the result stay in
    the web server's temp folder for the client to fetch and are swept after ``--result_ttl`` seconds
    (an upload may be shared by requests still in the queue: the same file is stored once), and all
    of it goes when the server stops."""

    def __init__(self, service, *, work_dir: str | None = None):
        self.service = service
        self.work_dir = work_dir or tempfile.gettempdir()
        self.requests = 0
        self.failures = 0
        self._count_lock = threading.Lock()

    def stats(self) -> dict:
        return {"requests": self.requests, "failures": self.failures, **self.service.stats()}

    def _run_with_progress(self, request, progress):
        """``service.run`` in a thread while this (the event's) thread shows its progress: Gradio's
        progress bar can only be updated from the event's own thread."""
        state = {"stage": "waiting for the device" if self.service.busy else "starting", "done": 0, "total": None}
        outcome: dict = {}

        def report(stage, done, total):
            if stage == "finding faces" and total and done >= total:
                stage, done, total = "starting the device program", 0, None
            state.update(stage=stage, done=done, total=total)

        def body():
            try:
                outcome["done"] = self.service.run(request, progress=True, on_progress=report)
            except BaseException as error:  # noqa: BLE001 - re-raised in the event's thread
                outcome["error"] = error

        worker = threading.Thread(target=body, name="web-job", daemon=True)
        worker.start()
        shown = None
        while worker.is_alive():
            now = (state["stage"], state["done"], state["total"])
            if progress is not None and now != shown:
                shown = now
                stage, done, total = now
                progress((done, total) if total else 0, desc=stage, unit="frames")
            worker.join(PROGRESS_SECONDS)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["done"]

    def lipsync(self, video, audio, guidance, steps, seed, face="", max_seconds=0, solver=None,
                deepcache_interval=None, overlap=None, progress=None):
        """Generator: yields (video path, status) once, then deletes the request's temp folder
        (Gradio asks for the next item only after it has copied the answer's file)."""
        with self._count_lock:
            self.requests += 1
            number = self.requests
        video = video.get("video") if isinstance(video, dict) else video
        audio = audio.get("path") if isinstance(audio, dict) else audio
        folder = cleanup.track_path(tempfile.mkdtemp(prefix="lipsync_request_", dir=self.work_dir))
        try:
            if not video:
                raise refusal("no video given: upload one (or pick an example)")
            if not audio:
                raise refusal("no audio given: upload one (or pick an example)")
            video, audio = hold(video, folder, "video"), hold(audio, folder, "audio")
            names = {os.path.dirname(p) + os.sep: "" for p in (video, audio)}  # messages name the file, not our folder
            values = dict(guidance=guidance, steps=steps, seed=seed, face=face, solver=solver,
                          deepcache_interval=deepcache_interval, overlap=overlap,
                          max_seconds=None if max_seconds in (None, "", 0, 0.0) else max_seconds)
            try:
                request = self.service.parse(video, audio, os.path.join(folder, "lipsync.mp4"), values)
                done = self._run_with_progress(request, progress)
            except Exception as error:  # noqa: BLE001 - a message, never a stack trace
                with self._count_lock:
                    self.failures += 1
                if not is_known(error):
                    traceback.print_exc()  # a bug: its traceback belongs in the server log
                message = user_message(error, names)
                print(f"request {number} refused: {message}", file=sys.stderr, flush=True)
                raise refusal(message) from None
            status = done.summary()
            if self.service.random_weights:
                status += " (RANDOM weights: the video is meaningless)"
            yield done.output_path, status
        finally:
            cleanup.remove_path(folder)


def unchecked(component):
    """``component`` (a number or slider) passing the client's value on as sent: the job parser
    checks it (pipeline/job.py: the same one-line message as every other door; Gradio would round
    it silently or fail on NaN). An instance attribute, not a subclass: Gradio writes a .pyi stub
    beside the source of every component subclass."""
    component.preprocess = lambda payload: payload
    return component


def files_in(folder: str) -> set[str]:
    return {os.path.join(parent, name) for parent, _dirs, files in os.walk(folder) for name in files}


def sweep_old_files(folder: str, age: float, stop: threading.Event, keep: set[str] = frozenset()) -> None:
    """Every ``age / 2`` seconds delete the files in ``folder`` not modified for ``age`` seconds (the
    web server's uploads, results and partial uploads), then the empty sub-folders; ``keep``: the
    page's own files (the examples Gradio copied there when the page was built)."""
    while not stop.wait(max(1.0, age / 2)):
        now = time.time()
        for parent, _dirs, files in os.walk(folder, topdown=False):
            for name in files:
                path = os.path.join(parent, name)
                if path in keep:
                    continue
                try:
                    if now - os.lstat(path).st_mtime > age:
                        os.remove(path)
                except OSError:
                    pass
            if parent != folder:
                try:
                    os.rmdir(parent)  # only when empty
                except OSError:
                    pass


def refusal(message: str) -> gr.Error:
    """The page's one-line error (Gradio prints no traceback for it)."""
    return gr.Error(message, print_exception=False)


def hold(path: str, folder: str, role: str) -> str:
    """A link (else a copy) of an upload in the request's folder, under the upload's own name."""
    if not os.path.isfile(path):
        return path  # the input checks name it
    held = os.path.join(folder, role, os.path.basename(path))
    os.makedirs(os.path.dirname(held), exist_ok=True)
    try:
        os.link(path, held)
    except OSError:
        shutil.copyfile(path, held)
    return held


def preview_examples(folder: str) -> list[list[str]]:
    """The demo media as example rows, the videos re-encoded to H.264 in ``folder`` (browsers cannot
    show the bundled HEVC files' thumbnails); [] when they are missing."""
    rows = []
    for video, audio in EXAMPLES:
        if not (os.path.exists(video) and os.path.exists(audio)):
            continue
        preview = os.path.join(folder, os.path.basename(video))
        if not os.path.exists(preview):
            run_ffmpeg(["-y", "-i", video, "-an", "-vf", "scale=-2:720", "-c:v", "libx264", "-preset", "veryfast",
                        "-crf", "23", "-pix_fmt", "yuv420p", "-movflags", "+faststart", preview],
                       what=f"example preview of {video}")
        rows.append([preview, audio])
    return rows


def build_blocks(handler: LipsyncApp, *, max_queue: int = 8, examples: list[list[str]] | None = None):
    service = handler.service
    d = service.defaults.sampling
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nUpload a talking-head video and the new speech (an audio file, or a video whose "
                    "sound to use); get the video back with the mouth re-synced to the audio."
                    + (" **Random weights: the output is meaningless.**" if service.random_weights else ""))
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video (with a face)", sources=["upload"], elem_id="input_video",
                                 height=VIDEO_HEIGHT)
                audio = gr.File(label="Audio (speech, or a video's sound track)", file_types=["audio", "video"],
                                type="filepath", elem_id="input_audio", height=120)
                with gr.Row():
                    guidance = unchecked(gr.Slider(*GUIDANCE_RANGE, value=d.guidance, step=GUIDANCE_STEP,
                                                   label="Guidance scale"))
                    steps = unchecked(gr.Slider(*STEPS_RANGE, value=d.steps, step=1, label="Steps"))
                    seed = unchecked(gr.Number(value=service.defaults.seed, precision=0, label="Seed"))
                with gr.Accordion("More options", open=False):
                    face = gr.Textbox(value="", label="Face (several people: largest, left, right, a track id, or all)")
                    max_seconds = unchecked(gr.Number(value=0, label="Only the first seconds of the audio (0 = all)"))
                    solvers = ["lcm"] if service.defaults.student is not None else list(SOLVER_CHOICES)
                    solver = gr.Dropdown(solvers, value=d.solver, label="Sampler")
                    deepcache = unchecked(gr.Slider(0, MAX_DEEPCACHE, value=d.deepcache_interval, step=1,
                                                    label="DeepCache interval (0 = off)"))
                    overlap = unchecked(gr.Slider(0, MAX_OVERLAP, value=d.overlap, step=1,
                                                  label="Chunk overlap (frames)"))
                run = gr.Button("Lip sync", variant="primary", elem_id="run_button")
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, elem_id="result_video", height=VIDEO_HEIGHT)
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        if examples:
            gr.Examples(examples, inputs=[video, audio], label="Examples (demo media)", cache_examples=False)
        inputs = [video, audio, guidance, steps, seed, face, max_seconds, solver, deepcache, overlap]

        def lipsync(*values, progress=gr.Progress()):
            yield from handler.lipsync(*values, progress=progress)

        run.click(lipsync, inputs=inputs, outputs=[result, status], api_name="lipsync", concurrency_limit=1)
        gr.api(handler.stats, api_name="stats")
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def make_service(fv: flags.FlagValues):
    config, defaults = shared.config_and_defaults(fv)
    return LipsyncService.from_config(config, **shared.model_sources(fv), run=shared.run_options(fv, defaults),
                                      avatar_cache=fv.avatar_cache, limits=web_limits(fv.max_seconds), log=print)


def serve(fv: flags.FlagValues) -> int:
    """Build the service and serve until stopped (runs in run_command's worker thread); with
    --plan_only / --plan_for print the memory plan instead (nothing loaded or served)."""
    config, defaults = shared.config_and_defaults(fv)
    run = shared.run_options(fv, defaults)
    if run.plans_only:
        return print_plan(config, run, defaults.sampling)
    if fv.random_init:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    service = make_service(fv)
    print(service.describe(), flush=True)
    if fv.warmup:
        print("compiling the device program ...", flush=True)
        service.compile()
    handler = LipsyncApp(service, work_dir=fv.work_dir)
    previews = cleanup.track_path(tempfile.mkdtemp(prefix="lipsync_examples_"))
    examples = preview_examples(previews)
    demo = build_blocks(handler, max_queue=fv.max_queue, examples=examples)
    uploads = os.environ["GRADIO_TEMP_DIR"]
    threading.Thread(target=sweep_old_files, args=(uploads, fv.result_ttl, threading.Event(), files_in(uploads)),
                     name="sweep-uploads", daemon=True).start()
    print(f"serving on http://{fv.host}:{fv.port}/ (API: /lipsync, /stats); uploads up to {fv.max_upload_mb} MB, "
          f"results kept {fv.result_ttl} s", flush=True)
    demo.launch(server_name=fv.host, server_port=fv.port, show_error=False, footer_links=["api"],
                allowed_paths=[previews, handler.work_dir] + [os.path.dirname(e[1]) for e in EXAMPLES],
                prevent_thread_lock=True,
                max_file_size=f"{fv.max_upload_mb}mb")
    threading.Event().wait()  # serve until the process is stopped
    return 0


def main(argv) -> None:
    configure_terminal(verbose=flags.FLAGS.verbose)  # before JAX starts: only our own warnings and errors
    fv = flags.FLAGS
    refuse_extra_arguments(argv)
    # uploads and results of this server in a folder of its own, removed when it stops
    parent = os.environ.get("GRADIO_TEMP_DIR") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = cleanup.track_path(tempfile.mkdtemp(prefix="lipsync_app_", dir=parent))
    run_command(lambda: serve(fv), show_traceback=lambda: False,
                stopped_message="server stopped, request files deleted")


def entry(argv: list[str] | None = None) -> None:
    """The console script (``lipsync-app``) and ``python app.py``; ``--live`` serves live mode."""
    argv = sys.argv if argv is None else argv
    configure_gpu_memory()  # before jax starts: grow on demand instead of preallocating 75% of the GPU
    if "--live" in argv[1:]:

        return live_entry([a for a in argv if a != "--live"])
    define_flags(flags.FLAGS)
    cli_flags.show_in_help(flags.FLAGS)
    app.run(main, argv=argv)
