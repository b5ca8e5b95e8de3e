"""The live server: a WebSocket endpoint for live sessions and a page that uses it.

    python -m lipsync_jax.serving.live_server --config configs/unet/stage2.py --checkpoint ... \
        --avatar avatar.mp4 --host 127.0.0.1 --port 8765        # then open http://127.0.0.1:8765/
    lipsync-live ... / python app.py --live ...                  # the same

Models are loaded, the engine built (``--max_vram`` plans its memory, as everywhere) and the
device program compiled once, through the same ``LipsyncService`` as the other doors; the avatar
is prepared once (decode + face pass, or its avatar cache entry) and shared by the sessions (at
most ``--max_sessions`` at a time; the device runs one chunk at a time anyway).

Protocol (``/ws``):
- client -> server: optionally first a text message ``{"type": "start", "format": "int16" |
  "float32", "sample_rate": 16000, "seed": ..., "pace": true}``; then binary messages of 16 kHz
  mono little-endian audio (any length); ``{"type": "end"}`` when the audio is over.
- server -> client: binary frame messages ``[uint32 big-endian n][n bytes of JSON header]
  [JPEG]``, header ``{"type": "frame", "index", "timestamp", "chunk", "generated", "latency"}``;
  text messages ``{"type": "status", ...}`` (after each chunk: state realtime/behind, achieved and
  generation fps, pending audio), ``{"type": "done", "metrics": {...}}`` at the end,
  ``{"type": "error", "message": ...}`` (then the socket closes).
A client that disconnects closes its session (worker thread and queues freed).

Other routes: ``/`` the page (static/live.html), ``/status`` JSON, ``/sample_audio`` a file to play
through the page (``--sample_audio``; the page's test hook ``/?autoplay=sample`` plays it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import struct
import sys
import threading

import cv2
import numpy as np
import uvicorn
from absl import app, flags
from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # module level: the endpoint's annotations resolve here
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.live.avatar import LiveAvatar
from lipsync_jax.live.session import StreamClosed, StreamOptions, StreamOverflow, StreamSession, warm_up
from lipsync_jax.pipeline.job import RunOptions, parse_sampling, parse_seed
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.cli import run_command
from lipsync_jax.serving.plan import LIVE_WHISPER_WINDOWS, print_plan
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def encode_frame(frame, quality: int = 80, max_side: int | None = None) -> bytes:
    """LiveFrame -> one binary WebSocket message (header + JPEG)."""
    image = frame.image
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    header = json.dumps(dict(type="frame", index=frame.index, timestamp=round(frame.timestamp, 4), chunk=frame.chunk,
                             generated=bool(frame.generated), latency=round(frame.latency, 4))).encode()
    return struct.pack(">I", len(header)) + header + jpeg.tobytes()


def decode_frame(message: bytes) -> tuple[dict, bytes]:
    """A binary frame message -> (header, JPEG bytes) (clients, tests)."""
    (n,) = struct.unpack(">I", message[:4])
    return json.loads(message[4:4 + n]), message[4 + n:]


def _next(session, timeout: float):
    """session.next_frame for a worker thread (StopIteration cannot cross a Future)."""
    try:
        return "frame", session.next_frame(timeout=timeout)
    except StopIteration:
        return "end", None


def create_app(engine, avatar, *, options=None, max_sessions: int = 2, sample_audio: str | None = None,
               jpeg_quality: int = 80, max_side: int | None = 720, random_weights: bool = False):
    """The FastAPI app serving live sessions of ``engine`` on ``avatar`` (a shared ``LiveAvatar``)."""
    base = options or StreamOptions()
    app = FastAPI(title="lipsync-jax live")
    state = dict(active=0, served=0)
    lock = threading.Lock()
    app.state.live = state

    @app.get("/")
    def page():
        with open(os.path.join(STATIC, "live.html"), encoding="utf-8") as f:
            return HTMLResponse(f.read())

    @app.get("/status")
    def status():
        return JSONResponse(dict(active_sessions=state["active"], sessions_served=state["served"],
                                 max_sessions=max_sessions, fps=avatar.fps, avatar=os.path.basename(avatar.path),
                                 avatar_frames=avatar.num_frames, sample_audio=bool(sample_audio),
                                 random_weights=random_weights))

    @app.get("/sample_audio")
    def sample():
        if not sample_audio:
            return JSONResponse({"error": "no sample audio (--sample_audio)"}, status_code=404)
        return FileResponse(sample_audio)

    @app.websocket("/ws")
    async def live(ws: WebSocket):
        await ws.accept()
        with lock:
            if state["active"] >= max_sessions:
                busy = True
            else:
                busy, state["active"] = False, state["active"] + 1
        if busy:
            await ws.send_text(json.dumps(dict(type="error", message=f"busy: {max_sessions} live sessions running")))
            await ws.close()
            return
        session = None
        try:
            fmt, first = "int16", await ws.receive()
            settings = {}
            if first.get("text"):
                start = json.loads(first["text"])
                fmt = start.get("format", "int16")
                if int(start.get("sample_rate", 16000)) != 16000 or fmt not in ("int16", "float32"):
                    await ws.send_text(json.dumps(dict(type="error", message="audio must be 16000 Hz mono int16 "
                                                                               "or float32")))
                    await ws.close()
                    return
                settings = {k: start[k] for k in ("seed", "pace") if k in start}
            session = StreamSession(engine, avatar, dataclasses.replace(base, **settings))
            if first.get("bytes"):
                session.push(first["bytes"], fmt)
            receiver = asyncio.create_task(_receive(ws, session, fmt))
            try:
                await _send(ws, session, jpeg_quality, max_side)
            finally:
                receiver.cancel()
        except StreamOverflow as error:
            await _try_send(ws, json.dumps(dict(type="error", message=str(error))))
        except (WebSocketDisconnect, StreamClosed, Exception):  # noqa: BLE001 - the client went away or it failed
            if session is not None and session.error is not None:
                await _try_send(ws, json.dumps(dict(type="error", message=f"live session failed: {session.error}")))
        finally:
            if session is not None:
                await asyncio.to_thread(session.close)
            with lock:
                state["active"] -= 1
                state["served"] += 1

    async def _receive(ws, session, fmt):
        try:
            while True:
                message = await ws.receive()
                if message.get("type") == "websocket.disconnect":
                    break
                if message.get("bytes"):
                    session.push(message["bytes"], fmt)
                elif message.get("text") and json.loads(message["text"]).get("type") == "end":
                    session.finish()
        except StreamOverflow as error:
            await _try_send(ws, json.dumps(dict(type="error", message=str(error))))
        except Exception:  # noqa: BLE001 - a broken client: stop its session
            pass
        session.stop.set()  # ends the sender: next_frame raises StreamClosed

    async def _send(ws, session, quality, side):
        chunks = 0
        while True:
            kind, frame = await asyncio.to_thread(_next, session, 0.25)
            if kind == "end":
                await ws.send_text(json.dumps(dict(type="done", metrics=session.metrics(), status=session.status())))
                await ws.close()
                return
            if frame is None:
                continue
            await ws.send_bytes(await asyncio.to_thread(encode_frame, frame, quality, side))
            if session.chunks_done != chunks:
                chunks = session.chunks_done
                await ws.send_text(json.dumps(dict(type="status", **session.status())))

    async def _try_send(ws, text):
        try:
            await ws.send_text(text)
        except Exception:  # noqa: BLE001 - already gone
            pass

    return app


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    shared.define_model_flags(fv)
    shared.define_sampling_flags(fv)
    shared.define_run_flags(fv)
    flags.DEFINE_string("avatar", None, "The video to animate.", flag_values=fv)
    flags.DEFINE_string("seed", None, "Default seed of a session (a client's start message may give its own).",
                        flag_values=fv)
    flags.DEFINE_string("avatar_cache", None, "Folder of avatar cache entries (face tracks and VAE moments).",
                        flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.", flag_values=fv)
    flags.DEFINE_integer("port", 8765, "Port to listen on.", lower_bound=1, upper_bound=65535, flag_values=fv)
    flags.DEFINE_integer("max_sessions", 2, "Live sessions at a time.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("sample_audio", None, "An audio file the page can play (/sample_audio).", flag_values=fv)
    flags.DEFINE_integer("jpeg_quality", 80, "JPEG quality of the frames sent.", lower_bound=1, upper_bound=100,
                         flag_values=fv)
    flags.DEFINE_integer("max_side", 720, "Downscale frames sent to the page to this longest side.", lower_bound=16,
                         flag_values=fv)
    flags.DEFINE_bool("traceback", False, "On an error, print the full traceback (for bug reports).", flag_values=fv)


def live_run_options(fv: flags.FlagValues, defaults) -> RunOptions:
    """The run flags, with one chunk per call unless --chunk_batch says otherwise (a session runs
    one chunk at a time)."""
    run = shared.run_options(fv, defaults)
    return run if run.chunk_batch is not None else dataclasses.replace(run, chunk_batch=1)


def prepare(fv: flags.FlagValues):
    """The service (models, engine, memory plan), the session options and the prepared avatar."""
    if not fv.avatar:
        raise ValueError("--avatar VIDEO is required (the video to animate)")
    for path, what in ((fv.avatar, "avatar video"), (fv.sample_audio, "sample audio")):
        if path and not os.path.isfile(path):
            raise ValueError(f"{what} {path}: no such file")
    config, defaults = shared.config_and_defaults(fv)
    sampling = parse_sampling(shared.sampling_values(fv), defaults)
    seed = parse_seed(fv.seed) if fv.seed else defaults.seed
    run = live_run_options(fv, defaults)
    if fv.random_init:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    service = LipsyncService.from_config(config, **shared.model_sources(fv), run=run, log=print)
    print(service.describe(), flush=True)
    options = StreamOptions(sampling=sampling, seed=seed)
    print(f"preparing the avatar {fv.avatar} ...", flush=True)
    avatar = LiveAvatar.prepare(service.models, fv.avatar, face_backend=run.face_backend,
                                avatar_cache=fv.avatar_cache, progress=True)
    try:
        print(f"compiling the device program ({sampling.steps} steps) ...", flush=True)
        warm_up(service.engine, options)
    except BaseException:
        avatar.close()
        raise
    return service, avatar, options


def main(argv) -> None:
    configure_terminal(verbose=flags.FLAGS.verbose)  # before JAX starts: only our own warnings and errors
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)

    def serve() -> int:
        config, defaults = shared.config_and_defaults(fv)
        run = live_run_options(fv, defaults)
        if run.plans_only:  # --plan_only / --plan_for: the live mode's plan (Whisper on one window per call)
            return print_plan(config, run, parse_sampling(shared.sampling_values(fv), defaults),
                              whisper_windows=LIVE_WHISPER_WINDOWS)
        service, avatar, options = prepare(fv)
        try:
            app = create_app(service.engine, avatar, options=options, max_sessions=fv.max_sessions,
                             sample_audio=fv.sample_audio, jpeg_quality=fv.jpeg_quality, max_side=fv.max_side,
                             random_weights=service.random_weights)
            print(f"live: http://{fv.host}:{fv.port}/  (WebSocket /ws)", flush=True)
            uvicorn.run(app, host=fv.host, port=fv.port, log_level="warning", ws="websockets-sansio")
        finally:
            avatar.close()
        return 0

    run_command(serve, show_traceback=lambda: fv.traceback,
                stopped_message="server stopped, avatar frame store deleted")


def entry(argv: list[str] | None = None) -> None:
    """The console script (``lipsync-live``), ``python -m lipsync_jax.serving.live_server`` and
    ``python app.py --live``."""
    configure_gpu_memory()
    define_flags(flags.FLAGS)
    shared.show_in_help(flags.FLAGS)
    app.run(main, argv=sys.argv if argv is None else argv)


if __name__ == "__main__":
    entry()
