"""Live mode numbers (lipsync_jax.live): online audio windows vs offline, and latency per stride.

    .venv/bin/python bench/bench_stream.py --random_init --steps 1 --strides 16,8,4
    .venv/bin/python bench/bench_stream.py --random_init --stand_in 0.03 --strides 16,8,4 --page --skip_windows
    # GPU (stage 2, 256 px, fast sampler):
    python bench/bench_stream.py --config configs/unet/stage2.py --unet_checkpoint ... --solver dpmsolver++ --steps 10

1. Window error (not with --skip_windows): demo1_audio.wav fed in 40 ms pieces
   (``stream_windows``: each chunk's windows computed as soon as it is ready) vs the offline
   windows, relative error per Whisper layer, for the whole clip and its first 2.8 s.
2. Latency per stride: a live session on a clip of demo1_video (--avatar_seconds, --avatar_size)
   fed ``--seconds`` of audio in 40 ms int16 pieces AT REAL TIME (a feeder thread pushes each
   piece at the wall time of its first sample), frames taken paced at 25 fps: first-frame latency,
   steady (after the first window) median / p95, jitter, achieved fps, generation fps, the split
   (audio, look-ahead, compute, pacing: medians; lipsync_jax/live/latency.py), the device time per
   window measured after warm-up, the host work per window (the window's compute minus that) and
   the device time per window real time allows at that stride (stride / fps - host work).
   ``--stand_in SECONDS``: the device program and Whisper encoder are ``StandInEngine``'s timed
   stand-ins (tests/helpers/stand_in.py; the encoder ``--stand_in_encoder`` seconds per call): everything
   else is real. Without it, the real program (``--steps``) runs on this machine.
3. ``--page``: the same sessions through the live server and its page in headless Chromium
   (tests/helpers/browser.py; the page plays a ``--seconds`` cut of demo1_audio.wav at real time):
   the figures the page shows (they are the session's own, sent in its status / done messages).
Prints a JSON summary and Markdown rows for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ASSETS = os.path.join(ROOT, "tests", "data", "assets")


def window_errors(models, seconds_list, piece):
    from lipsync_jax.live import stream_windows, window_error
    from lipsync_jax.pipeline import prepare_audio

    rows = {}
    for seconds in seconds_list:
        plan = prepare_audio(models, os.path.join(ASSETS, "demo1_audio.wav"), 25.0, seconds)
        begin = time.perf_counter()
        online = stream_windows(models.audio, plan.samples, piece=piece, chunk=models.num_frames)
        took = time.perf_counter() - begin
        offline = plan.windows(np.arange(plan.num_frames))
        rows[f"{len(plan.samples) / 16000:.1f}s"] = dict(
            frames=int(plan.num_frames), per_layer=[round(e, 4) for e in window_error(online, offline,
                                                                                     plan.embeddings.shape[1])],
            last_chunk_max_abs=float(np.abs(online[-(plan.num_frames % 16 or 16):]
                                            - offline[-(plan.num_frames % 16 or 16):]).max()),
            seconds=round(took, 1))
    return rows


def summary(metrics: dict, status: dict, stride: int, fps: float, device: float | None, compute: list[float]):
    """One row's figures (seconds, rounded)."""
    host = None if device is None or not compute else max(0.0, float(np.median(compute)) - device)
    return dict(stride=stride, frames=metrics["frames"], first_frame_latency=round(metrics["first_frame_latency"], 3),
                steady_latency_median=round(metrics["steady_latency_median"], 3),
                steady_latency_p95=round(metrics["steady_latency_p95"], 3), jitter=round(metrics["jitter"], 4),
                achieved_fps=round(metrics["achieved_fps"], 2), late_frames=metrics.get("late_frames"),
                generation_fps=None if status.get("generation_fps") is None else round(status["generation_fps"], 2),
                split={k: round(v, 3) for k, v in metrics["split"].items()},
                device_seconds=None if device is None else round(device, 4),
                host_seconds=None if host is None else round(host, 4),
                window_compute_median=round(float(np.median(compute)), 4) if compute else None,
                device_budget=None if host is None else round(stride / fps - host, 4))


def session_run(engine, avatar, options, pcm, piece):
    """A paced session fed at real time; (metrics, status, per-window compute seconds)."""
    from lipsync_jax.live import StreamSession

    session = StreamSession(engine, avatar, options)
    compute: list[float] = []

    def feeder():
        t0 = time.perf_counter()
        for start in range(0, len(pcm), piece):
            wait = t0 + start / 16000 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            session.push(pcm[start:start + piece])
        session.finish()

    thread = threading.Thread(target=feeder)
    thread.start()
    seen = 0
    for _ in session.frames():
        windows = list(session.window_seconds)
        if session.windows_done > seen:  # the deque keeps the last 8: collect as they come
            compute.extend(s for _, s in windows[-(session.windows_done - seen):])
            seen = session.windows_done
    thread.join()
    metrics, status = session.metrics(), session.status()
    session.close(timeout=30)
    return metrics, status, compute


def make_engine(models, args):
    from lipsync_jax.pipeline import LipsyncEngine, RunOptions
    from tests.helpers.stand_in import StandInEngine

    if args.stand_in is not None:
        return StandInEngine(models, device_seconds=args.stand_in, encoder_seconds=args.stand_in_encoder)
    return LipsyncEngine(models, RunOptions(chunk_batch=1))


def latency_rows(models, args, clip, strides):
    from lipsync_jax.audio import load_audio
    from lipsync_jax.live import LiveAvatar, StreamOptions, warm_up

    sampling = sampling_of(args)
    engine = make_engine(models, args)
    samples = load_audio(os.path.join(ASSETS, "demo1_audio.wav"))[:int(args.seconds * 16000)]
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    rows = []
    with LiveAvatar.prepare(models, clip, face_backend="mediapipe") as avatar:
        for stride in strides:
            options = StreamOptions(sampling=sampling, seed=1, stride=stride, pace=True)
            begin = time.perf_counter()
            device = warm_up(engine, options, repeats=3)
            compile_s = time.perf_counter() - begin
            metrics, status, compute = session_run(engine, avatar, options, pcm, args.piece)
            row = summary(metrics, status, stride, float(models.fps), device, compute)
            row["warm_up_seconds"] = round(compile_s, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def page_rows(models, args, clip, strides, folder):
    from lipsync_jax.live import LiveAvatar, StreamOptions, warm_up
    from lipsync_jax.media import ffmpeg_exe
    from lipsync_jax.serving.live_server import create_app
    from tests.helpers.browser import Browser
    from tests.helpers.live import Server

    sample = os.path.join(folder, "sample.wav")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", os.path.join(ASSETS, "demo1_audio.wav"), "-t",
                    str(args.seconds), "-ac", "1", "-ar", "16000", sample], check=True)
    engine = make_engine(models, args)
    sampling = sampling_of(args)
    devices = {s: warm_up(engine, StreamOptions(sampling=sampling, stride=s), repeats=3) for s in strides}
    rows = []
    with LiveAvatar.prepare(models, clip, face_backend="mediapipe") as avatar:
        app = create_app(engine, avatar, options=StreamOptions(sampling=sampling, seed=1), strides=devices,
                         sample_audio=sample, max_side=480, log=lambda line: None)
        server = Server(app)
        try:
            for stride in strides:
                profile = tempfile.mkdtemp(prefix="profile_", dir=folder)
                with Browser(f"{server.url}/?autoplay=sample&stride={stride}", width=900, height=760,
                             profile=profile) as page:
                    state = page.wait_for("window.liveState", 60 + 20 * args.seconds,
                                          until=lambda s: s.get("done") or s.get("error"))
                    time.sleep(0.3)
                    shown = page.eval("Object.fromEntries(['first', 'median', 'p95', 'achieved', 'jitter']"
                                      ".map((id) => [id, document.getElementById(id).textContent]))")
                if state.get("error") or not state.get("done"):
                    raise RuntimeError(f"stride {stride}: the page did not finish: {state}")
                last = app.state.live["last"]
                row = summary(last["metrics"], last["status"], stride, float(models.fps), devices[stride], [])
                row["page_shows"] = shown
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
    return rows


def sampling_of(args):
    from lipsync_jax.pipeline import Sampling

    return Sampling(steps=args.steps, solver=args.solver or "ddim", deepcache_interval=args.deepcache_interval)


def markdown(out: dict, rows: list[dict], where: str) -> list[str]:
    what = (f"stand-in device {out['stand_in']} s/window" if out.get("stand_in") is not None else
            f"{out['config']} {out['resolution']} px {out['dtype']}, {out['sampler']} {out['steps']} steps")
    lines = []
    for r in rows:
        s = r["split"]
        lines.append(
            f"| {out['device']} | {what} | {where} | {r['stride']} | {r['frames']} | {r['first_frame_latency']} | "
            f"{r['steady_latency_median']} / {r['steady_latency_p95']} | {r['jitter']} | {r['achieved_fps']} | "
            f"{s['audio']} / {s['look_ahead']} / {s['compute']} / {s['pacing']} | {r['generation_fps']} | "
            f"{r['device_seconds']} | {r['host_seconds']} | {r['device_budget']} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "unet", "tiny.py"))
    p.add_argument("--unet_checkpoint", default="")
    p.add_argument("--vae_checkpoint", default="")
    p.add_argument("--whisper_checkpoint", default="")
    p.add_argument("--random_init", action="store_true")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--solver", default="ddim")
    p.add_argument("--deepcache_interval", type=int, default=0)
    p.add_argument("--strides", default="16,8,4")
    p.add_argument("--seconds", type=float, default=6.0, help="audio streamed per session")
    p.add_argument("--avatar_seconds", type=float, default=2.0)
    p.add_argument("--avatar_size", default="540:960", help="the avatar clip's width:height")
    p.add_argument("--piece", type=int, default=640, help="samples per pushed piece (640 = 40 ms)")
    p.add_argument("--stand_in", type=float, default=None, help="stand-in device seconds per window")
    p.add_argument("--stand_in_encoder", type=float, default=0.005, help="stand-in Whisper seconds per call")
    p.add_argument("--page", action="store_true", help="also through the server and page in headless Chromium")
    p.add_argument("--skip_windows", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp

    from lipsync_jax.config_utils import load_config
    from lipsync_jax.media import ffmpeg_exe
    from lipsync_jax.pipeline import build_models

    strides = [int(s) for s in args.strides.split(",")]
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    models = build_models(load_config(args.config), unet_checkpoint=args.unet_checkpoint,
                          vae_checkpoint=args.vae_checkpoint, whisper_checkpoint=args.whisper_checkpoint,
                          dtype=dtype, random_init=args.random_init, seed=0)
    out = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
               config=os.path.relpath(args.config, ROOT), resolution=models.resolution, dtype=jnp.dtype(dtype).name,
               steps=args.steps, sampler=sampling_of(args).sampler_options() or "ddim", stand_in=args.stand_in,
               stand_in_encoder=args.stand_in_encoder if args.stand_in is not None else None,
               load_average=os.getloadavg()[0])
    if not args.skip_windows:
        out["window_error"] = window_errors(models, [None, 2.8], args.piece)
    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "avatar.mp4")
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", os.path.join(ASSETS, "demo1_video.mp4"),
                        "-t", str(args.avatar_seconds), "-vf", f"scale={args.avatar_size}", "-an", "-c:v", "libx264",
                        "-preset", "ultrafast", "-crf", "12", clip], check=True)
        out["latency"] = latency_rows(models, args, clip, strides)
        if args.page:
            out["page"] = page_rows(models, args, clip, strides, tmp)
    out["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    for line in markdown(out, out["latency"], "session") + markdown(out, out.get("page", []), "page (Chromium)"):
        print(line)


if __name__ == "__main__":
    main()
