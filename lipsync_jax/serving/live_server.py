"""The live server: a WebSocket endpoint for live sessions and a page that uses it.

    python -m lipsync_jax.serving.live_server --config configs/unet/stage2.py --checkpoint ... \\
        --avatar avatar.mp4 --stride 4 --host 127.0.0.1 --port 8765   # then open http://127.0.0.1:8765/
    lipsync-live ... / python app.py --live ...                         # the same

Models are loaded, the engine built (``--max_vram`` plans its memory, as everywhere) through the
same ``LipsyncService`` as the other doors; the avatar is prepared once (decode + face pass, or its
avatar cache entry, whose VAE moments replace the encoder) and shared by the sessions (at most
``--max_sessions`` at a time). Before the first client, the device program of every stride the
server offers (``--stride``, the default, and ``--strides``) is compiled, run once and timed;
``--max_latency SECONDS`` instead picks the largest stride whose wait plus measured device time
fits (live/programs.py) and prints what it chose.

Protocol (``/ws``; serving/live_protocol.py): an optional first text message ``{"type":
"start", "format": "int16" | "float32", "sample_rate": 16000, "seed": N, "pace": true, "stride": S
| "max_latency": SECONDS}`` (a stride the server offers, or the largest offered one that fits the
budget), binary audio messages, ``{"type": "end"}``. Server -> client: ``{"type": "started",
"stride", "overlap", "choice", "device_seconds"}`` first; binary frame messages ``[uint32
big-endian n][n bytes of JSON header][JPEG]``, header ``{"type": "frame", "index", "timestamp",
"chunk", "generated", "latency"}``; text ``{"type": "status", ...}`` after each window (state,
achieved and generation fps, latency median / p95, the latency split, pending audio),
``{"type": "done", "metrics", "status"}`` at the end; any bad message gets ``{"type": "error",
"message": ...}`` (logged too) and the socket is closed normally. A client that disconnects frees
its slot at once (its window in flight is abandoned, not awaited).

Other routes: ``/`` the page (static/live.html), ``/status`` JSON (strides offered with their
device time, the random-weights warning), ``/sample_audio`` a file to play through the page
(``--sample_audio``; the page's test hook ``/?autoplay=sample`` plays it).

Stops: the body runs under serving/cli.py's ``run_command``; SIGTERM / Ctrl-C delete every
registered temp path (the avatar's frame store registers its folder: lipsync_jax/cleanup.py) and
exit 143 / 130 at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import struct
import sys
import threading
from collections.abc import Callable, Mapping

import cv2
import numpy as np
import uvicorn
from absl import app, flags
from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # module level: the endpoint's annotations resolve here
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from lipsync_jax import cli_flags
from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.live.audio_online import look_ahead_seconds
from lipsync_jax.live.avatar import LiveAvatar
from lipsync_jax.live.programs import choose_stride, warm_up
from lipsync_jax.live.session import StreamClosed, StreamOptions, StreamOverflow, StreamSession
from lipsync_jax.pipeline.job import (
    NUM_FRAMES,
    OptionError,
    RunOptions,
    parse_float,
    parse_int,
    parse_sampling,
    parse_seed,
)
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.cli import refuse_extra_arguments, run_command
from lipsync_jax.serving.live_protocol import ProtocolError, Start, audio_samples, parse_start, parse_text
from lipsync_jax.serving.plan import LIVE_WHISPER_WINDOWS, print_plan
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CLOSE_NORMAL, CLOSE_TRY_LATER, CLOSE_INTERNAL = 1000, 1013, 1011


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


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class _Server:
    engine: object
    avatar: LiveAvatar
    base: StreamOptions
    strides: dict[int, float | None]  # stride -> measured device seconds per window
    quality: int
    max_side: int | None
    log: Callable[[str], None]
    state: dict


class _Connection:
    """One client on ``/ws`` (see the module docstring)."""

    def __init__(self, server: _Server, ws: WebSocket, name: str):
        self.server, self.ws, self.name = server, ws, name
        self.session: StreamSession | None = None
        self.fmt = "int16"
        self.ended = False  # the client sent end
        self.problem: str | None = None  # a bad message seen by the receiver
        self.gone = False  # the client disconnected
        self.started: dict = {}  # the started message (open)

    async def run(self) -> None:
        try:
            first = await self.ws.receive()
            if first.get("type") == "websocket.disconnect":
                return
            start, audio = Start(), None
            if first.get("text") is not None:
                message = parse_text(first["text"])
                if message["type"] == "start":
                    start = parse_start(message)
                else:
                    self.ended = True
            elif first.get("bytes") is not None:
                audio = audio_samples(first["bytes"], "int16")
            self.open(start)
            if audio is not None:
                self.session.push(audio)
            if self.ended:
                self.session.finish()
            receiver = asyncio.create_task(self.receive())
            try:
                await self.send_frames()
            finally:
                receiver.cancel()
        except (ProtocolError, OptionError, StreamOverflow) as error:
            await self.fail(str(error), CLOSE_NORMAL)
        except WebSocketDisconnect:
            pass
        except StreamClosed:
            if self.problem is not None:
                await self.fail(self.problem, CLOSE_NORMAL)
            elif self.session is not None and self.session.error is not None and not await self.stopping():
                error = self.session.error
                await self.fail(f"live session failed: {type(error).__name__}: {error}", CLOSE_INTERNAL)
        except Exception as error:  # noqa: BLE001 - one line to the client and the log, never a dropped socket
            await self.fail(f"internal error ({type(error).__name__}: {error})", CLOSE_INTERNAL)
        finally:
            if self.session is not None:
                self.session.close()

    async def stopping(self, wait: float = 2.0) -> bool:
        """Whether the avatar's frame store goes within ``wait`` seconds: a stop signal's clean-up
        deleted it under the session (the process exits at once and its stop line says why)."""
        deadline = asyncio.get_running_loop().time() + wait
        while not self.server.avatar.gone:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def open(self, start: Start) -> None:
        server = self.server
        offered = tuple(sorted(server.strides, reverse=True))
        choice = None
        if start.max_latency is not None:
            choice = choose_stride(start.max_latency, lambda s: server.strides[s] or 0.0, strides=offered,
                                   fps=float(server.engine.models.fps))
            stride = choice.stride
        elif start.stride is not None:
            stride = start.stride
            if stride not in server.strides:
                raise OptionError(f"stride {stride}: this server offers {', '.join(map(str, offered))} (--strides)")
        else:
            stride = server.base.stride
        settings = dict(stride=stride, seed=start.seed, pace=start.pace)
        options = dataclasses.replace(server.base, **{k: v for k, v in settings.items() if v is not None})
        self.fmt = start.format
        self.session = StreamSession(server.engine, server.avatar, options)
        self.started = dict(type="started", stride=stride, overlap=NUM_FRAMES - stride,
                            device_seconds=server.strides.get(stride),
                            choice=None if choice is None else choice.describe())

    async def receive(self) -> None:
        """Audio and ``end`` into the session; a bad message or a disconnect stops it."""
        session = self.session
        try:
            while True:
                message = await self.ws.receive()
                if message.get("type") == "websocket.disconnect":
                    self.gone = True
                    break
                if message.get("bytes") is not None:
                    if self.ended:
                        raise ProtocolError(f"audio message of {len(message['bytes'])} bytes after end")
                    session.push(audio_samples(message["bytes"], self.fmt))
                elif message.get("text") is not None:
                    kind = parse_text(message["text"])["type"]
                    if kind == "start":
                        raise ProtocolError("start message: only as the first message")
                    if self.ended:
                        raise ProtocolError("end message: the audio already ended")
                    self.ended = True
                    session.finish()
        except (ProtocolError, OptionError, StreamOverflow) as error:
            self.problem = str(error)
        except StreamClosed:
            return
        except Exception as error:  # noqa: BLE001 - reported by the sender, never a dropped socket
            self.problem = f"internal error ({type(error).__name__}: {error})"
        session.close()  # the sender's next_frame raises StreamClosed at once

    async def send_frames(self) -> None:
        server, session, windows = self.server, self.session, 0
        await self.ws.send_text(json.dumps(self.started))
        while True:
            kind, frame = await asyncio.to_thread(_next, session, 0.25)
            if self.problem is not None:
                raise ProtocolError(self.problem)
            if kind == "end":
                metrics, status = session.metrics(), session.status()
                server.state["last"] = dict(metrics=metrics, status=status)
                await self.ws.send_text(json.dumps(dict(type="done", metrics=metrics, status=status)))
                await self.ws.close(CLOSE_NORMAL)
                median = metrics.get("steady_latency_median")
                server.log(f"live session {self.name}: {metrics.get('frames', 0)} frames at stride "
                           f"{session.stride}" + ("" if median is None else f", latency median {median:.3f} s"))
                return
            if frame is None:
                continue
            await self.ws.send_bytes(await asyncio.to_thread(encode_frame, frame, server.quality, server.max_side))
            if session.windows_done != windows:
                windows = session.windows_done
                await self.ws.send_text(json.dumps(dict(type="status", **session.status())))

    async def fail(self, message: str, code: int) -> None:
        """Log the problem, tell the client, close the socket (whatever state it is in)."""
        self.server.log(f"live session {self.name}: error: {message}")
        try:
            await self.ws.send_text(json.dumps(dict(type="error", message=message)))
            await self.ws.close(code)
        except Exception:  # noqa: BLE001 - the client is already gone
            pass


def create_app(engine, avatar, *, options: StreamOptions | None = None,
               strides: Mapping[int, float | None] | None = None, max_sessions: int = 2,
               sample_audio: str | None = None, jpeg_quality: int = 80, max_side: int | None = 720,
               random_weights: bool = False, log: Callable[[str], None] | None = None):
    """The FastAPI app serving live sessions of ``engine`` on ``avatar`` (a shared ``LiveAvatar``).
    ``strides``: the strides clients may choose, with their measured device seconds per window
    (their programs warmed: ``warm_up``); default: only ``options.stride``. ``log``: one line per
    error and per finished session (default: stderr)."""
    base = options or StreamOptions()
    offered = dict(strides or {})
    offered.setdefault(base.stride, None)
    state = dict(active=0, served=0, last=None)
    server = _Server(engine, avatar, base, offered, jpeg_quality, max_side, log or _log_stderr, state)
    lock = threading.Lock()
    app = FastAPI(title="lipsync-jax live")
    app.state.live = state

    @app.get("/")
    def page():
        with open(os.path.join(STATIC, "live.html"), encoding="utf-8") as f:
            return HTMLResponse(f.read())

    @app.get("/status")
    def status():
        fps = float(engine.models.fps)
        return JSONResponse(dict(active_sessions=state["active"], sessions_served=state["served"],
                                 max_sessions=max_sessions, fps=avatar.fps, avatar=os.path.basename(avatar.path),
                                 avatar_frames=avatar.num_frames, sample_audio=bool(sample_audio),
                                 stride=base.stride, look_ahead=look_ahead_seconds(fps),
                                 strides=[dict(stride=s, device_seconds=d) for s, d in sorted(offered.items())],
                                 random_weights=random_weights,
                                 warning=RANDOM_WEIGHTS_WARNING if random_weights else None))

    @app.get("/sample_audio")
    def sample():
        if not sample_audio:
            return JSONResponse({"error": "no sample audio (--sample_audio)"}, status_code=404)
        return FileResponse(sample_audio)

    @app.websocket("/ws")
    async def live(ws: WebSocket):
        await ws.accept()
        with lock:
            busy = state["active"] >= max_sessions
            if not busy:
                state["active"] += 1
                state["served"] += 1
                number = state["served"]
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "client"
        if busy:
            connection = _Connection(server, ws, f"({client})")
            await connection.fail(f"busy: {max_sessions} live sessions running, try again later", CLOSE_TRY_LATER)
            return
        try:
            await _Connection(server, ws, f"{number} ({client})").run()
        finally:
            with lock:
                state["active"] -= 1

    return app


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    shared.define_model_flags(fv)
    shared.define_sampling_flags(fv)
    shared.define_run_flags(fv)
    text = lambda name, help_text: flags.DEFINE_string(name, None, help_text, flag_values=fv)  # noqa: E731
    text("avatar", "The video to animate.")
    text("seed", "Default seed of a session (a client's start message may give its own).")
    text("stride", "New frames per 16-frame window, 1..16 (default 16: disjoint chunks). Windows share 16 - stride "
                   "frames, denoised as --overlap does; a window starts once the audio of its new frames is there, "
                   "so latency falls with the stride while device work per frame grows 16 / stride times.")
    text("strides", "More strides a client may choose (comma list, e.g. 16,8,4): each is compiled at start.")
    text("max_latency", "Latency budget in seconds: picks the largest stride whose wait (stride / 25 s + 82.5 ms "
                        "look-ahead) plus the measured device time per window fits (instead of --stride).")
    text("avatar_cache", "Folder of avatar cache entries (face tracks and VAE moments).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.", flag_values=fv)
    flags.DEFINE_integer("port", 8765, "Port to listen on.", lower_bound=1, upper_bound=65535, flag_values=fv)
    flags.DEFINE_integer("max_sessions", 2, "Live sessions at a time.", lower_bound=1, flag_values=fv)
    text("sample_audio", "An audio file the page can play (/sample_audio).")
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


def parse_strides(fv: flags.FlagValues) -> tuple[int, set[int]]:
    """(default stride, the further strides offered) from --stride / --strides."""
    stride = parse_int("stride", fv.stride, low=1, high=NUM_FRAMES) if fv.stride else NUM_FRAMES
    extra = {parse_int("strides", part, low=1, high=NUM_FRAMES) for part in (fv.strides or "").split(",")
             if part.strip()}
    return stride, extra


def prepare(fv: flags.FlagValues):
    """The service, the session options, the strides offered ({stride: device seconds}) and the
    prepared avatar; every offered stride's program compiled, run and timed."""
    if not fv.avatar:
        raise ValueError("--avatar VIDEO is required (the video to animate)")
    for path, what in ((fv.avatar, "avatar video"), (fv.sample_audio, "sample audio")):
        if path and not os.path.isfile(path):
            raise ValueError(f"{what} {path}: no such file")
    config, defaults = shared.config_and_defaults(fv)
    sampling = parse_sampling(shared.sampling_values(fv), defaults)
    if sampling.overlap:
        raise OptionError(f"overlap {sampling.overlap}: live sessions take the overlap from --stride "
                          f"(stride = 16 - overlap: --stride {NUM_FRAMES - sampling.overlap})")
    seed = parse_seed(fv.seed) if fv.seed else defaults.seed
    stride, extra = parse_strides(fv)
    max_latency = parse_float("max_latency", fv.max_latency, low=0.0) if fv.max_latency else None
    if max_latency is not None and fv.stride:
        raise OptionError("use --stride or --max_latency, not both")
    run = live_run_options(fv, defaults)
    if run.chunk_batch != 1 and (min({stride, *extra}) < NUM_FRAMES or max_latency):
        raise OptionError(f"chunk_batch {run.chunk_batch}: live sessions with stride < {NUM_FRAMES} run one window "
                          f"per call (chunk_batch 1)")
    if fv.random_init:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    service = LipsyncService.from_config(config, **shared.model_sources(fv), run=run, log=print)
    service.announce(sampling)
    print(service.describe(), flush=True)
    options = StreamOptions(sampling=sampling, seed=seed, stride=stride)
    print(f"preparing the avatar {fv.avatar} ...", flush=True)
    avatar = LiveAvatar.prepare(service.models, fv.avatar, face_backend=run.face_backend,
                                avatar_cache=fv.avatar_cache, progress=True)
    try:
        moments = avatar.moments is not None
        measured: dict[int, float] = {}

        def measure(s: int) -> float:
            if s not in measured:
                print(f"compiling the device program ({sampling.steps} steps, stride {s}) ...", flush=True)
                measured[s] = warm_up(service.engine, dataclasses.replace(options, stride=s), moments=moments,
                                      repeats=2)
                print(f"stride {s}: {measured[s]:.3f} s of device time per window "
                      f"({s / float(service.models.fps):.3f} s of audio per window)", flush=True)
            return measured[s]

        if max_latency is not None:
            choice = choose_stride(max_latency, measure, fps=float(service.models.fps))
            print(choice.describe(), flush=True)
            options = dataclasses.replace(options, stride=choice.stride)
        strides = {s: measure(s) for s in sorted({options.stride, *extra}, reverse=True)}
    except BaseException:
        avatar.close()
        raise
    return service, avatar, options, strides


def main(argv) -> None:
    configure_terminal(verbose=flags.FLAGS.verbose)  # before JAX starts: only our own warnings and errors
    fv = flags.FLAGS
    refuse_extra_arguments(argv)

    def serve() -> int:
        config, defaults = shared.config_and_defaults(fv)
        run = live_run_options(fv, defaults)
        if run.plans_only:  # --plan_only / --plan_for: the live mode's plan (Whisper on one window per call)
            return print_plan(config, run, parse_sampling(shared.sampling_values(fv), defaults),
                              whisper_windows=LIVE_WHISPER_WINDOWS)
        service, avatar, options, strides = prepare(fv)
        try:
            app = create_app(service.engine, avatar, options=options, strides=strides, max_sessions=fv.max_sessions,
                             sample_audio=fv.sample_audio, jpeg_quality=fv.jpeg_quality, max_side=fv.max_side,
                             random_weights=service.random_weights)
            print(f"live: http://{fv.host}:{fv.port}/  (WebSocket /ws; stride {options.stride}, offered "
                  f"{', '.join(map(str, sorted(strides, reverse=True)))})", flush=True)
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
    cli_flags.show_in_help(flags.FLAGS)
    app.run(main, argv=sys.argv if argv is None else argv)


if __name__ == "__main__":
    entry()
