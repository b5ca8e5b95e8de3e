"""Live lip sync: audio is pushed as it arrives, frames come out chunk by chunk.

    avatar = LiveAvatar.prepare(engine.models, "avatar.mp4")      # decoded once, shared by sessions
    session = StreamSession(engine, avatar, StreamOptions(sampling=Sampling(steps=20), seed=1))
    session.push(samples)              # any chunk size, 16 kHz mono, float32 or int16 (any thread)
    frame = session.next_frame()       # LiveFrame: index, timestamp, RGB uint8 image (paced)
    session.finish()                   # end of audio: the last (short) chunk is flushed
    session.close()                    # stop now, free everything (also on a client disconnect)

One worker thread per session: when the online audio features (audio_online.py) have the
windows of the next 16 frames, it builds the chunk exactly as the offline engine does (ping-pong
source frames, the nearest face as a stand-in, chunk index -> VAE keys, the last chunk padded)
and submits it through the same chunk dispatcher (pipeline/dispatch.py: the avatar's cached VAE
moments replace the encoder when it has them); while the device computes, it pastes the previous
chunk's faces back into the frames and queues them. So the output equals the offline engine's
wherever the audio windows are equal (tests/test_stream.py forces them equal).

Pacing and back-pressure: ``next_frame`` hands frames out at the video rate (frame i is due
``i / fps`` after the first frame); a frame that is late re-bases the clock (never dropped, and
no two frames closer than 1 / fps) and
``status()`` says ``behind`` with the achieved rate. The output queue holds ``queue_frames``
frames (the worker waits when it is full); audio pushed but not yet turned into frames is bounded
by ``max_pending_seconds`` (``push`` raises ``StreamOverflow`` past it), so a burst is accepted
and worked off, and nothing grows without bound.

Latency (``metrics()``): for frame i, the audio sample at its timestamp i / fps arrived at some
wall time (push times are recorded); latency = time the frame was handed out - that arrival.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from lipsync_jax.audio.whisper_mel import SAMPLE_RATE
from lipsync_jax.live.audio_online import OnlineAudioFeatures, to_float_audio
from lipsync_jax.pipeline.dispatch import ChunkSubmitter, ChunkWork, chunk_inputs, paste_faces
from lipsync_jax.pipeline.job import Sampling, parse_seed
from lipsync_jax.pipeline.program import start_noise

POLL_SECONDS = 0.05
RECENT_FRAMES = 4500  # frames whose metadata metrics() keeps besides the first chunk (3 minutes at 25 fps)
PACE_SLACK = 0.002  # seconds a paced frame may come after its due time without re-basing the clock
_END = object()


class StreamOverflow(Exception):
    """More audio is waiting than ``max_pending_seconds``: the producer cannot keep up with a burst."""


class StreamClosed(Exception):
    """The session was closed (or failed); no more frames."""


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    sampling: Sampling = Sampling()  # one face, disjoint chunks: overlap must be 0
    seed: int = 1247
    pace: bool = True  # hand frames out at the video rate (False: as soon as they are ready)
    queue_frames: int = 48  # frames held between the worker and the consumer
    max_pending_seconds: float = 60.0  # audio accepted but not yet turned into frames
    # test/bench hook: the windows of output frames from elsewhere (e.g. the offline AudioPlan.windows)
    frame_windows: Callable[[np.ndarray], np.ndarray] | None = None
    # sees each generated chunk's faces ((k, R, R, 3) float32) like InferenceJob.on_chunk
    on_chunk: Callable[[int, int, np.ndarray], None] | None = None
    # sees each chunk's audio windows (chunk index, (k, rows * layers, d)) as the session computed them
    on_windows: Callable[[int, np.ndarray], None] | None = None


@dataclasses.dataclass
class LiveFrame:
    index: int  # output frame number
    timestamp: float  # seconds into the stream (index / fps)
    image: np.ndarray  # (H, W, 3) uint8 RGB
    chunk: int
    generated: bool  # the face was lip-synced (False: no face here, the source frame as is)
    ready_at: float = 0.0  # perf_counter when the worker queued it
    emitted_at: float = 0.0  # perf_counter when next_frame handed it out
    audio_arrived_at: float = 0.0  # perf_counter when the audio sample at ``timestamp`` was pushed

    @property
    def latency(self) -> float:
        return self.emitted_at - self.audio_arrived_at


class StreamSession:
    def __init__(self, engine, avatar, options: StreamOptions | None = None, *, owns_avatar: bool = False):
        self.engine, self.avatar = engine, avatar
        self.options = options or StreamOptions()
        if self.options.sampling.overlap:
            raise ValueError("live sessions run disjoint 16-frame chunks: overlap must be 0")
        parse_seed(self.options.seed)
        models = engine.models
        self.fps = float(models.fps)
        self.owns_avatar = owns_avatar
        self.f = models.num_frames
        self.audio = OnlineAudioFeatures(models.audio, self.fps, models.audio_feat_length,
                                         windows=self.options.sampling.audio_windows)
        self.submitter = ChunkSubmitter(engine, self.options.sampling, self.options.seed,
                                        moments=getattr(avatar, "moments", None))
        self.out: queue.Queue = queue.Queue(maxsize=max(self.f, int(self.options.queue_frames)))
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.closed = False
        self.ended_output = False
        self._arrivals: collections.deque = collections.deque()  # (cumulative samples, perf_counter)
        self.frames_done = 0  # frames queued by the worker
        self.frames_emitted = 0
        self.chunks_done = 0
        self.chunk_seconds: list[float] = []  # per chunk: compute seconds (windows, device, restore)
        # metadata of emitted frames (images dropped): the first chunk's and the last RECENT_FRAMES
        self._first_emitted: list[LiveFrame] = []
        self._recent_emitted: collections.deque = collections.deque(maxlen=RECENT_FRAMES)
        self._clock: tuple[float, int] | None = None  # (perf_counter, frame index) of the pacing clock
        self.late_frames = 0
        self.opened_at = time.perf_counter()
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, engine.restore_threads)),
                                                           thread_name_prefix="live-restore")
        self.worker = threading.Thread(target=self._run, name=f"live-session-{id(self):x}", daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------ input side
    def push(self, samples, dtype: str | None = None) -> None:
        """Append audio (16 kHz mono; float32 / int16 array, or raw bytes of ``dtype``)."""
        self._check_open()
        samples = to_float_audio(samples, dtype)
        pending = (self.audio.received + len(samples) - self.frames_done * SAMPLE_RATE / self.fps) / SAMPLE_RATE
        if pending > self.options.max_pending_seconds:
            raise StreamOverflow(f"{pending:.1f} s of audio waiting (limit {self.options.max_pending_seconds:g} s): "
                                 f"frames are produced slower than audio arrives")
        if len(samples) == 0:
            return
        self.audio.push(samples)
        with self.cond:
            self._arrivals.append((self.audio.received, time.perf_counter()))
            self.cond.notify_all()

    def finish(self) -> None:
        """No more audio: the remaining frames are produced, then ``next_frame`` raises StopIteration."""
        self._check_open()
        self.audio.finish()
        with self.cond:
            self.cond.notify_all()

    def _check_open(self) -> None:
        if self.closed or self.stop.is_set():
            raise StreamClosed("the live session is closed" + (f" ({self.error})" if self.error else ""))

    def _arrival_of(self, sample: int) -> float:
        with self.cond:
            counts = [c for c, _ in self._arrivals]
            k = bisect.bisect_right(counts, sample)
            if k >= len(self._arrivals):
                return self._arrivals[-1][1] if self._arrivals else self.opened_at
            return self._arrivals[k][1]

    def _forget_arrivals(self, sample: int) -> None:
        with self.cond:
            while len(self._arrivals) > 1 and self._arrivals[1][0] <= sample:
                self._arrivals.popleft()

    # ------------------------------------------------------------------ worker
    def _wait_chunk(self, start: int) -> tuple[int, int] | None:
        """Wait (bounded polls) until frames start.. are ready: (start, stop), or None to poll again."""
        with self.cond:
            if self.audio.ended:
                total = int(self.audio.num_frames)
                return (start, min(start + self.f, total)) if start < total else (start, start)
            if self.audio.ready_frames() >= start + self.f:
                return start, start + self.f
            self.cond.wait(POLL_SECONDS)
        return None

    def _build(self, index: int, start: int, stop: int) -> dict:
        began = time.perf_counter()
        frames = np.arange(start, stop)
        sources = [self.avatar.source_of(i) for i in frames]
        windows = self.options.frame_windows or self.audio.windows
        stand_in = lambda s: self.avatar.record(self.avatar.stand_in(s)).aligned.face  # noqa: E731
        chunk = ChunkWork(index, start, records=[])
        if any(self.avatar.has_face[s] for s in sources):
            chunk.faces, chunk.audio = chunk_inputs(np.asarray(sources), stand_in, windows, frames, self.f)
        else:
            chunk.audio = windows(frames)
        self.audio.release_before(stop)
        if self.options.on_windows is not None:
            self.options.on_windows(index, chunk.audio[:stop - start])
        work = dict(index=index, start=start, sources=sources, output=None, began=began)
        if chunk.faces is not None:
            work["output"] = self.submitter.submit([chunk])
        work["build_seconds"] = time.perf_counter() - began
        return work

    def _restore(self, source: int, face) -> tuple[np.ndarray, bool]:
        record = self.avatar.record(source)
        if face is None or record.aligned is None:
            return record.frame, False
        return paste_faces(record.frame, [(record.aligned, face)]), True

    def _complete(self, work: dict) -> None:
        began = time.perf_counter()
        generated = None
        if work["output"] is not None:
            generated = np.asarray(work["output"])[0][:len(work["sources"])]
            if self.options.on_chunk is not None:
                self.options.on_chunk(work["index"], work["start"], generated)
        jobs = [self._pool.submit(self._restore, s, None if generated is None else generated[j])
                for j, s in enumerate(work["sources"])]
        images = [job.result() for job in jobs]
        # compute time of the chunk (windows + launch, device wait, restore), not the waits for audio or space
        self.chunk_seconds.append(work["build_seconds"] + time.perf_counter() - began)
        for j, (image, made) in enumerate(images):
            i = work["start"] + j
            frame = LiveFrame(i, i / self.fps, image, work["index"], made, ready_at=time.perf_counter(),
                              audio_arrived_at=self._arrival_of(int(i * SAMPLE_RATE / self.fps)))
            self._put(frame)
            self.frames_done += 1
        self.chunks_done += 1
        self._forget_arrivals(int(self.frames_done * SAMPLE_RATE / self.fps))

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                pass
        raise StreamClosed("closed")

    def _run(self) -> None:
        pending, index, start = None, 0, 0
        try:
            while not self.stop.is_set():
                bounds = self._wait_chunk(start)
                if bounds is None:
                    if pending is not None:  # no new audio yet: finish what the device has
                        self._complete(pending)
                        pending = None
                    continue
                if bounds[1] <= bounds[0]:
                    break
                work = self._build(index, *bounds)  # launched: the device works while we restore
                if pending is not None:
                    self._complete(pending)
                pending, index, start = work, index + 1, bounds[1]
            if pending is not None and not self.stop.is_set():
                self._complete(pending)
            self._put(_END)
        except StreamClosed:
            pass
        except BaseException as error:  # noqa: BLE001 - reported to the consumer
            self.error = error
            self.stop.set()

    # ------------------------------------------------------------------ output side
    def next_frame(self, timeout: float | None = None) -> LiveFrame | None:
        """The next frame (paced at the video rate when ``options.pace``); None when ``timeout``
        passes first; raises StopIteration after the last frame, StreamClosed if closed or failed."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            if self.error is not None:
                raise StreamClosed(f"live session failed: {type(self.error).__name__}: {self.error}")
            if self.ended_output:
                raise StopIteration
            if self.closed or (self.stop.is_set() and self.out.empty()):
                raise StreamClosed("the live session is closed")
            wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - time.perf_counter()))
            try:
                item = self.out.get(timeout=wait)
                break
            except queue.Empty:
                if deadline is not None and time.perf_counter() >= deadline:
                    return None
        if item is _END:
            self.ended_output = True
            raise StopIteration
        item.emitted_at = self._pace(item)
        self.frames_emitted += 1
        meta = dataclasses.replace(item, image=np.zeros((0,), np.uint8))
        (self._first_emitted if len(self._first_emitted) < self.f else self._recent_emitted).append(meta)
        return item

    def _pace(self, frame: LiveFrame) -> float:
        """Wait until the frame is due; returns the time it is handed out."""
        if not self.options.pace:
            return time.perf_counter()
        due = None
        if self._clock is not None:
            due = self._clock[0] + (frame.index - self._clock[1]) / self.fps
            while not self.stop.is_set() and time.perf_counter() < due:
                time.sleep(min(POLL_SECONDS, max(0.0, due - time.perf_counter())))
        now = time.perf_counter()
        if due is None or now > due + PACE_SLACK:  # late: show it now and re-base the clock (no frame dropped,
            if due is not None and now - due > 1.0 / self.fps:  # no two frames closer than 1 / fps - slack)
                self.late_frames += 1
            self._clock = (now, frame.index)
        return now

    def frames(self):
        """Iterate frames until the end of the stream."""
        while True:
            try:
                frame = self.next_frame()
            except StopIteration:
                return
            if frame is not None:
                yield frame

    # ------------------------------------------------------------------ status and metrics
    def status(self) -> dict:
        recent = (self._first_emitted + list(self._recent_emitted))[-2 * self.f:]
        achieved = None
        if len(recent) >= 2 and recent[-1].emitted_at > recent[0].emitted_at:
            achieved = (len(recent) - 1) / (recent[-1].emitted_at - recent[0].emitted_at)
        gen = self.chunk_seconds[-4:]  # recent chunks (the last one may be short)
        generation_fps = self.f / float(np.mean(gen)) if gen else None
        behind = generation_fps is not None and generation_fps < self.fps * 0.98
        state = ("failed" if self.error is not None else "closed" if self.closed else
                 "ended" if self.ended_output else "behind" if behind else "realtime")
        return dict(state=state, target_fps=self.fps, achieved_fps=achieved, generation_fps=generation_fps,
                    frames_emitted=self.frames_emitted, frames_ready=self.frames_done, chunks=self.chunks_done,
                    late_frames=self.late_frames, queued_frames=self.out.qsize(),
                    audio_received_s=self.audio.received / SAMPLE_RATE,
                    audio_pending_s=max(0.0, self.audio.received / SAMPLE_RATE - self.frames_done / self.fps),
                    error=None if self.error is None else f"{type(self.error).__name__}: {self.error}")

    def metrics(self) -> dict:
        """Latency accounting over the frames handed out so far (seconds)."""
        return latency_metrics(self._first_emitted + list(self._recent_emitted), self.fps, self.f)

    # ------------------------------------------------------------------ closing
    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker, drop queued frames, free the pool (and the avatar if the session owns it)."""
        if self.closed:
            return
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        self.worker.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break
        self.closed = True
        if self.owns_avatar:
            self.avatar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def latency_metrics(frames: list[LiveFrame], fps: float, chunk: int = 16) -> dict:
    if not frames:
        return dict(frames=0)
    latency = np.array([f.latency for f in frames])
    emitted = np.array([f.emitted_at for f in frames])
    steady = latency[chunk:] if len(latency) > chunk else latency
    intervals = np.diff(emitted)
    return dict(frames=len(frames), first_frame_latency=float(latency[0]),
                steady_latency_median=float(np.median(steady)), steady_latency_p95=float(np.percentile(steady, 95)),
                latency_max=float(latency.max()),
                jitter=float(np.std(intervals - 1.0 / fps)) if len(intervals) else 0.0,
                achieved_fps=float((len(frames) - 1) / (emitted[-1] - emitted[0])) if len(frames) > 1 and
                emitted[-1] > emitted[0] else None)


def warm_audio_encoder(models) -> None:
    """Compile the Whisper encoder's one-window shape now (the first chunk should not pay it)."""
    config = models.audio.config
    models.audio.encode_windows(np.zeros((1, config.n_frames, config.n_mels), np.float32))


def warm_up(engine, options: StreamOptions) -> None:
    """Compile and run the device program once on blank inputs, and the audio encoder, so that a
    session's first chunk pays for neither (time to first frame = audio + compute only)."""
    models = engine.models
    warm_audio_encoder(models)
    program = engine.program(options.sampling)
    f, r, b = models.num_frames, models.resolution, engine.batch
    layers = models.audio.config.n_audio_layer + 1
    rows = sum(models.audio_feat_length) * 2 + 2
    noise, key_data = program.put_job(*start_noise(models, options.seed))
    faces = np.zeros((b, f, r, r, 3), np.uint8)
    audio = np.zeros((b, f, rows * layers, models.audio.config.n_audio_state), np.float32)
    np.asarray(program(*engine.weights_for(program), faces, audio, np.zeros((b,), np.int32), noise, key_data))
