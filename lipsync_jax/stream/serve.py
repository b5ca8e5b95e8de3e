"""The live server: a WebSocket endpoint for live sessions and a page that uses it.

    python -m lipsync_jax.stream.serve --config configs/unet/stage2.py --unet_checkpoint ... \
        --avatar avatar.mp4 --host 127.0.0.1 --port 8765        # then open http://127.0.0.1:8765/

Models are loaded and the device program compiled once; the avatar is prepared once (decode +
face pass, or its avatar cache entry) and shared by the sessions (at most ``--max_sessions`` at a
time; the device runs one chunk at a time anyway).

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

import argparse
import asyncio
import json
import os
import struct
import sys
import threading

import cv2
import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # module level: the endpoint's annotations resolve here
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

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
               jpeg_quality: int = 80, max_side: int | None = 720):
    """The FastAPI app serving live sessions of ``engine`` on ``avatar`` (a shared ``LiveAvatar``)."""
    from lipsync_jax.stream.session import StreamClosed, StreamOptions, StreamOverflow, StreamSession

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
                                 avatar_frames=avatar.num_frames, sample_audio=bool(sample_audio)))

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
            import dataclasses
            session = StreamSession(engine, avatar, dataclasses.replace(base, **settings), fps=avatar.fps)
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
        from lipsync_jax.stream.session import StreamOverflow

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Live lip sync over a WebSocket (and a page to try it).")
    p.add_argument("--config", required=True, help="UNet config, e.g. configs/unet/stage2.py")
    p.add_argument("--avatar", required=True, help="the video to animate")
    p.add_argument("--unet_checkpoint", default="")
    p.add_argument("--vae_checkpoint", default="")
    p.add_argument("--whisper_checkpoint", default="")
    p.add_argument("--random_init", action="store_true", help="random weights (smoke tests)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 elsewhere)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--solver", default=None, help="ddim | dpmsolver++ (default: the config's)")
    p.add_argument("--deepcache_interval", type=int, default=None)
    p.add_argument("--face_backend", default="mediapipe")
    p.add_argument("--avatar_cache", default="", help="folder of avatar cache entries (face tracks)")
    p.add_argument("--max_sessions", type=int, default=2)
    p.add_argument("--sample_audio", default="", help="an audio file the page can play (/sample_audio)")
    p.add_argument("--jpeg_quality", type=int, default=80)
    p.add_argument("--max_side", type=int, default=720, help="downscale frames sent to the page to this side")
    return p


def prepare(args):
    """Models (via LipsyncService), the engine with the sampler options, the avatar and the options."""
    from lipsync_jax.serving import LipsyncService, ServiceJob
    from lipsync_jax.stream.avatar import LiveAvatar
    from lipsync_jax.stream.session import StreamOptions, warm_up

    service = LipsyncService.from_config(args.config, unet_checkpoint=args.unet_checkpoint,
                                         vae_checkpoint=args.vae_checkpoint,
                                         whisper_checkpoint=args.whisper_checkpoint, random_init=args.random_init,
                                         dtype=args.dtype, chunk_batch=1, face_backend=args.face_backend)
    job = ServiceJob("", "", "", solver=args.solver, deepcache_interval=args.deepcache_interval)
    engine = service.engine(service.sampler_options(job))
    d = service.defaults
    options = StreamOptions(num_steps=int(args.steps or d["steps"]),
                            guidance_scale=float(d["guidance"] if args.guidance is None else args.guidance),
                            seed=int(d["seed"] if args.seed is None else args.seed))
    print(f"compiling the device program ({options.num_steps} steps) ...", flush=True)
    warm_up(engine, options)
    print(f"preparing the avatar {args.avatar} ...", flush=True)
    avatar = LiveAvatar.prepare(engine.models, args.avatar, fps=service.fps, face_backend=args.face_backend,
                                avatar_cache=args.avatar_cache or None, progress=True)
    return engine, avatar, options


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lipsync_jax.pipeline.errors import InferenceError

    for path, what in ((args.config, "config"), (args.avatar, "avatar video"), (args.sample_audio, "sample audio")):
        if path and not os.path.isfile(path):
            print(f"error: {what} {path}: no such file", file=sys.stderr)
            return 2
    try:
        engine, avatar, options = prepare(args)
    except (InferenceError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    app = create_app(engine, avatar, options=options, max_sessions=args.max_sessions,
                     sample_audio=args.sample_audio or None, jpeg_quality=args.jpeg_quality, max_side=args.max_side)
    print(f"live: http://{args.host}:{args.port}/  (WebSocket /ws)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="websockets")
    finally:
        avatar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
