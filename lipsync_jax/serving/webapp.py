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
import sys
import tempfile
import threading
import traceback

import gradio as gr
from absl import app, flags

from lipsync_jax import cleanup
from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.cli import error_line, is_known, run_command
from lipsync_jax.serving.live_server import entry as live_entry
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService, ServiceLimits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = [(os.path.join(ROOT, "tests", "data", "assets", f"demo{i}_video.mp4"),
             os.path.join(ROOT, "tests", "data", "assets", f"demo{i}_audio.wav")) for i in (1, 2)]
TITLE = "lipsync-jax: LatentSync lip sync"
SOLVER_CHOICES = ("ddim", "dpmsolver++")
STEPS_RANGE, GUIDANCE_RANGE, GUIDANCE_STEP = (1, 50), (1.0, 3.0), 0.1  # the page's sliders: also the API's limits
MAX_DEEPCACHE, MAX_OVERLAP = 5, 8


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
    """The request handler around one ``LipsyncService`` (see the module docstring)."""

    def __init__(self, service, *, work_dir: str | None = None):
        self.service = service
        self.work_dir = work_dir or tempfile.gettempdir()
        self.requests = 0
        self.failures = 0
        self._count_lock = threading.Lock()

    def stats(self) -> dict:
        return {"requests": self.requests, "failures": self.failures, **self.service.stats()}

    def lipsync(self, video, audio, guidance, steps, seed, face="", max_seconds=0, solver=None,
                deepcache_interval=None, overlap=None, progress=None):
        """Generator: yields (video path, status) once, then deletes the request's temp folder
        (Gradio asks for the next item only after it has copied the answer's file)."""

        with self._count_lock:
            self.requests += 1
        video = video.get("video") if isinstance(video, dict) else video
        folder = cleanup.track_path(tempfile.mkdtemp(prefix="lipsync_request_", dir=self.work_dir))
        names = {video or "": os.path.basename(video or ""), audio or "": os.path.basename(audio or "")}
        try:
            if not video:
                raise gr.Error("no video given: upload one (or pick an example)")
            if not audio:
                raise gr.Error("no audio given: upload one (or pick an example)")
            values = dict(guidance=guidance, steps=steps, seed=seed, face=face, solver=solver,
                          deepcache_interval=deepcache_interval, overlap=overlap,
                          max_seconds=None if max_seconds in (None, "", 0, 0.0) else max_seconds)
            try:
                request = self.service.parse(video, audio, os.path.join(folder, "lipsync.mp4"), values)
                if progress is not None:
                    progress(0, desc="waiting for the device" if self.service.busy else "starting")
                done = self.service.run(request, progress=True)
            except Exception as error:  # noqa: BLE001 - a message, never a stack trace
                with self._count_lock:
                    self.failures += 1

                if not is_known(error):
                    traceback.print_exc()
                raise gr.Error(user_message(error, names)) from None
            status = done.summary()
            if self.service.random_weights:
                status += " (RANDOM weights: the video is meaningless)"
            yield done.output_path, status
        finally:
            cleanup.remove_path(folder)


def build_blocks(handler: LipsyncApp, *, max_queue: int = 8):
    service = handler.service
    d = service.defaults.sampling
    with gr.Blocks(title=TITLE, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\nUpload a talking-head video and the new speech; get the video back with the "
                    "mouth re-synced to the audio." + (" **Random weights: the output is meaningless.**"
                                                         if service.random_weights else ""))
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video (with a face)", sources=["upload"], elem_id="input_video")
                audio = gr.Audio(label="Audio (speech)", type="filepath", sources=["upload"], elem_id="input_audio")
                with gr.Row():
                    guidance = gr.Slider(*GUIDANCE_RANGE, value=d.guidance, step=GUIDANCE_STEP, label="Guidance scale")
                    steps = gr.Slider(*STEPS_RANGE, value=d.steps, step=1, label="Steps")
                    seed = gr.Number(value=service.defaults.seed, precision=0, label="Seed")
                with gr.Accordion("More options", open=False):
                    face = gr.Textbox(value="", label="Face (several people: largest, left, right, a track id, or all)")
                    max_seconds = gr.Number(value=0, label="Only the first seconds of the audio (0 = all)")
                    solver = gr.Dropdown(list(SOLVER_CHOICES), value=d.solver, label="Sampler")
                    deepcache = gr.Slider(0, MAX_DEEPCACHE, value=d.deepcache_interval, step=1,
                                          label="DeepCache interval (0 = off)")
                    overlap = gr.Slider(0, MAX_OVERLAP, value=d.overlap, step=1, label="Chunk overlap (frames)")
                run = gr.Button("Lip sync", variant="primary", elem_id="run_button")
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, elem_id="result_video")
                status = gr.Textbox(label="Status", interactive=False)
        examples = [list(e) for e in EXAMPLES if all(os.path.exists(p) for p in e)]
        if examples:
            gr.Examples(examples, inputs=[video, audio], label="Examples (demo media)", cache_examples=False)
        inputs = [video, audio, guidance, steps, seed, face, max_seconds, solver, deepcache, overlap]

        def lipsync(*values, progress=gr.Progress(track_tqdm=True)):
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
    """Build the service and serve until stopped (runs in run_command's worker thread)."""
    if fv.random_init:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    service = make_service(fv)
    print(service.describe(), flush=True)
    if fv.warmup:
        print("compiling the device program ...", flush=True)
        service.compile()
    handler = LipsyncApp(service, work_dir=fv.work_dir)
    demo = build_blocks(handler, max_queue=fv.max_queue)
    print(f"serving on http://{fv.host}:{fv.port}/ (API: /lipsync, /stats)", flush=True)
    demo.launch(server_name=fv.host, server_port=fv.port, show_error=False, footer_links=["api"],
                allowed_paths=[os.path.dirname(p) for e in EXAMPLES for p in e], prevent_thread_lock=True)
    threading.Event().wait()  # serve until the process is stopped
    return 0


def main(argv) -> None:
    configure_terminal(verbose=flags.FLAGS.verbose)  # before JAX starts: only our own warnings and errors
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    if not os.environ.get("GRADIO_TEMP_DIR"):  # uploads and results of this server: removed when it stops
        os.environ["GRADIO_TEMP_DIR"] = cleanup.track_path(tempfile.mkdtemp(prefix="lipsync_app_"))
    run_command(lambda: serve(fv), show_traceback=lambda: False,
                stopped_message="server stopped, request files deleted")


def entry(argv: list[str] | None = None) -> None:
    """The console script (``lipsync-app``) and ``python app.py``; ``--live`` serves live mode."""
    argv = sys.argv if argv is None else argv
    configure_gpu_memory()  # before jax starts: grow on demand instead of preallocating 75% of the GPU
    if "--live" in argv[1:]:

        return live_entry([a for a in argv if a != "--live"])
    define_flags(flags.FLAGS)
    app.run(main, argv=argv)
