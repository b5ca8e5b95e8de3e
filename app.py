"""Lip sync as a web page and an HTTP API (Gradio).

    python app.py --config configs/unet/stage2.py --checkpoint checkpoints/jax/unet \\
        --vae_checkpoint checkpoints/jax/vae --whisper_checkpoint checkpoints/jax/whisper \\
        [--avatar_cache avatars/] [--max_queue 8] [--max_seconds 60] --host 127.0.0.1 --port 7860
    python app.py --config configs/unet/tiny.py --random_init     # smoke test: meaningless output

Open http://127.0.0.1:7860: upload (or pick an example) video and audio, set guidance, steps,
seed (and the sampler options this build has), press "Lip sync", watch the progress bar, then
watch or download the result. The models are loaded when the server starts and the device
program is compiled by the first request (``--warmup``: at start); later requests with the same
settings compile nothing. One job runs on the device at a time; up to ``--max_queue`` wait
behind it and further requests get "the queue is full" (busy) at once. Bad inputs get the same
one-line messages as infer.py, never a stack trace. Each request works in its own temp folder,
deleted when its answer has been sent.

API (named endpoint ``/lipsync``; ``/stats`` returns the server's job and compile counters):

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    video, status = client.predict(handle_file("in.mp4"), handle_file("speech.wav"),
                                   1.5, 20, 1247, "", 0, api_name="/lipsync")
    # video: {"video": "/tmp/.../lipsync.mp4", ...}; status: one line (frames, seconds, compiles)

Arguments of ``/lipsync`` in order: video, audio, guidance, steps, seed, face ("" = the only /
largest face), max_seconds (0 = the whole audio), then, where this build supports them,
solver, deepcache_interval, overlap (see ``python app.py --help``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import traceback

from lipsync_jax.device_memory import configure_gpu_memory

configure_gpu_memory()  # before jax starts: grow on demand instead of preallocating 75% of the GPU

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "unet", "stage2.py")
EXAMPLES = [(os.path.join(ROOT, "tests", "data", "assets", f"demo{i}_video.mp4"),
             os.path.join(ROOT, "tests", "data", "assets", f"demo{i}_audio.wav")) for i in (1, 2)]
TITLE = "lipsync-jax: LatentSync lip sync"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="lipsync-jax web app and API (Gradio)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="UNet config file (e.g. configs/unet/stage2.py)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override, e.g. --set data.resolution=512 (repeatable)")
    p.add_argument("--checkpoint", default="checkpoints/jax/unet", help="converted UNet folder")
    p.add_argument("--vae_checkpoint", default="checkpoints/jax/vae", help="converted VAE folder")
    p.add_argument("--whisper_checkpoint", default="checkpoints/jax/whisper", help="converted Whisper folder")
    p.add_argument("--random_init", action="store_true", help="random weights (smoke tests: meaningless output)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    p.add_argument("--chunk_batch", type=int, default=None)
    p.add_argument("--face_backend", choices=["mediapipe", "insightface"], default="mediapipe")
    p.add_argument("--avatar_cache", default=None, help="folder of cached face tracks (faster repeat avatars)")
    p.add_argument("--compile_cache", default=None, help="persistent XLA compile cache folder")
    p.add_argument("--nocompile_cache", action="store_true")
    p.add_argument("--max_queue", type=int, default=8, help="requests waiting behind the running one")
    p.add_argument("--max_seconds", type=float, default=None,
                   help="longest audio a request may lip-sync (longer ones are cut); default: no limit")
    p.add_argument("--warmup", action="store_true", help="compile the default program before serving")
    p.add_argument("--work_dir", default=None, help="where per-request temp folders go (default: system temp)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    return p.parse_args(argv)


def user_message(error: BaseException, replacements: dict[str, str]) -> str:
    """One line for the page: our errors' own message (upload paths shortened to file names)."""
    known = type(error).__module__.startswith("lipsync_jax") or isinstance(error, (OSError, ValueError))
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for path, name in replacements.items():
        if path:
            text = text.replace(path, name)
    return text if known else f"internal error ({type(error).__name__}); see the server log"


class LipsyncApp:
    """The request handler around one ``LipsyncService`` (see the module docstring)."""

    def __init__(self, service, *, max_seconds: float | None = None, work_dir: str | None = None):
        self.service = service
        self.max_seconds = max_seconds
        self.work_dir = work_dir or tempfile.gettempdir()
        self.requests = 0
        self.failures = 0
        self._count_lock = threading.Lock()

    def stats(self) -> dict:
        from lipsync_jax.serving import compile_count

        return {"requests": self.requests, "failures": self.failures, "jobs_done": self.service.jobs_done,
                "compiles": compile_count(), "busy": self.service.busy,
                "avatar_cache": self.service.avatar_cache.root if self.service.avatar_cache else None}

    def lipsync(self, video, audio, guidance, steps, seed, face="", max_seconds=0, solver=None,
                deepcache_interval=None, overlap=None, progress=None):
        """Generator: yields (video path, status) once, then deletes the request's temp folder
        (Gradio asks for the next item only after it has copied the answer's file)."""
        import gradio as gr

        from lipsync_jax.serving import ServiceJob

        with self._count_lock:
            self.requests += 1
        video = video.get("video") if isinstance(video, dict) else video
        folder = tempfile.mkdtemp(prefix="lipsync_request_", dir=self.work_dir)
        names = {video or "": os.path.basename(video or ""), audio or "": os.path.basename(audio or "")}
        try:
            if not video:
                raise gr.Error("no video given: upload one (or pick an example)")
            if not audio:
                raise gr.Error("no audio given: upload one (or pick an example)")
            limit = float(max_seconds) if max_seconds else None
            if self.max_seconds is not None:
                limit = min(limit or self.max_seconds, self.max_seconds)
            output = os.path.join(folder, "lipsync.mp4")
            job = ServiceJob(video, audio, output, seed=None if seed in (None, "") else int(seed),
                             guidance=None if guidance in (None, "") else float(guidance),
                             steps=None if steps in (None, "") else int(steps), face=(face or "").strip() or None,
                             max_seconds=limit, solver=solver or None,
                             deepcache_interval=None if deepcache_interval in (None, "") else int(deepcache_interval),
                             overlap=None if overlap in (None, "") else int(overlap), progress=True, preset="veryfast")
            if progress is not None:
                progress(0, desc="waiting for the device" if self.service.busy else "starting")
            try:
                result = self.service.run(job)
            except gr.Error:
                raise
            except Exception as error:  # noqa: BLE001 - a message, never a stack trace
                with self._count_lock:
                    self.failures += 1
                if not (type(error).__module__.startswith("lipsync_jax") or isinstance(error, (OSError, ValueError))):
                    traceback.print_exc()
                raise gr.Error(user_message(error, names)) from None
            status = (f"{result.num_frames} frames, {result.duration:.2f} s of audio, {result.seconds:.1f} s; "
                      f"seed {result.seed}, guidance {result.guidance:g}, {result.steps} steps; "
                      f"compiled {result.compiles} programs; avatar cache {result.avatar}")
            if self.service.models.random_init:
                status += " (RANDOM weights: the video is meaningless)"
            yield result.output_path, status
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def build_blocks(handler: LipsyncApp, *, max_queue: int = 8):
    import gradio as gr

    from lipsync_jax.serving import solver_choices

    service = handler.service
    support = service.support
    d = service.defaults
    with gr.Blocks(title=TITLE, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\nUpload a talking-head video and the new speech; get the video back with the "
                    "mouth re-synced to the audio." + (" **Random weights: the output is meaningless.**"
                                                         if service.models.random_init else ""))
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video (with a face)", sources=["upload"], elem_id="input_video")
                audio = gr.Audio(label="Audio (speech)", type="filepath", sources=["upload"], elem_id="input_audio")
                with gr.Row():
                    guidance = gr.Slider(1.0, 3.0, value=d["guidance"], step=0.1, label="Guidance scale")
                    steps = gr.Slider(1, 50, value=d["steps"], step=1, label="Steps")
                    seed = gr.Number(value=d["seed"], precision=0, label="Seed")
                with gr.Accordion("More options", open=False):
                    face = gr.Textbox(value="", label="Face (several people: largest, left, right, a track id, or all)")
                    max_seconds = gr.Number(value=0, label="Only the first seconds of the audio (0 = all)")
                    extra = []
                    if support["solver"]:
                        extra.append(gr.Dropdown(solver_choices(), value=d["solver"], label="Sampler"))
                    if support["deepcache_interval"]:
                        extra.append(gr.Slider(0, 5, value=d["deepcache_interval"], step=1,
                                               label="DeepCache interval (0 = off)"))
                    if support["overlap"]:
                        extra.append(gr.Slider(0, 8, value=d["overlap"], step=1, label="Chunk overlap (frames)"))
                run = gr.Button("Lip sync", variant="primary", elem_id="run_button")
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, elem_id="result_video")
                status = gr.Textbox(label="Status", interactive=False)
        examples = [list(e) for e in EXAMPLES if all(os.path.exists(p) for p in e)]
        if examples:
            gr.Examples(examples, inputs=[video, audio], label="Examples (demo media)", cache_examples=False)
        inputs = [video, audio, guidance, steps, seed, face, max_seconds]
        names = ["solver", "deepcache_interval", "overlap"]
        present = [n for n in names if support[n]]

        def lipsync(*values, progress=gr.Progress(track_tqdm=True)):
            fixed, options = values[:len(inputs)], dict(zip(present, values[len(inputs):]))
            yield from handler.lipsync(*fixed, progress=progress, **options)

        run.click(lipsync, inputs=inputs + extra, outputs=[result, status], api_name="lipsync", concurrency_limit=1)
        gr.api(handler.stats, api_name="stats")
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def make_service(args):
    from lipsync_jax.pipeline import enable_compile_cache
    from lipsync_jax.serving import LipsyncService

    if not args.nocompile_cache:
        enable_compile_cache(args.compile_cache)
    return LipsyncService.from_config(args.config, overrides=args.set, unet_checkpoint=args.checkpoint,
                                      vae_checkpoint=args.vae_checkpoint, whisper_checkpoint=args.whisper_checkpoint,
                                      random_init=args.random_init, dtype=args.dtype, chunk_batch=args.chunk_batch,
                                      avatar_cache=args.avatar_cache, face_backend=args.face_backend)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--live" in argv:  # live mode: the WebSocket server and its page, with lipsync_jax.stream.serve's flags
        from lipsync_jax.stream.serve import main as live_main
        sys.exit(live_main([a for a in argv if a != "--live"]))
    args = parse_args(argv)
    try:
        service = make_service(args)
        if args.warmup:
            print("compiling the device program ...", flush=True)
            service.compile()
    except Exception as error:  # noqa: BLE001 - one line, as infer.py
        print(f"error: {user_message(error, {})}", file=sys.stderr)
        sys.exit(1)
    if args.random_init:
        print("WARNING: --random_init: RANDOM weights; every output video is meaningless.", file=sys.stderr)
    handler = LipsyncApp(service, max_seconds=args.max_seconds, work_dir=args.work_dir)
    demo = build_blocks(handler, max_queue=args.max_queue)
    print(f"serving on http://{args.host}:{args.port}/ (API: /lipsync, /stats)", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False, footer_links=["api"],
                allowed_paths=[os.path.dirname(p) for e in EXAMPLES for p in e])


if __name__ == "__main__":
    main()
