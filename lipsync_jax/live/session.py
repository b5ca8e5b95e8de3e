"""Live lip sync: audio is pushed as it arrives, frames come out window by window.

    avatar = LiveAvatar.prepare(engine.models, "avatar.mp4")      # decoded once, shared by sessions
    session = StreamSession(engine, avatar, StreamOptions(sampling=Sampling(steps=20), seed=1, stride=4))
    session.push(samples)              # any chunk size, 16 kHz mono, float32 or int16 (any thread)
    frame = session.next_frame()       # LiveFrame: index, timestamp, RGB uint8 image (paced)
    session.finish()                   # end of audio: the last (short) window is flushed
    session.close()                    # stop now, free the slot (also on a client disconnect)

Windows: each device call denoises a 16-frame window of which ``stride`` S frames are new; the
other K = 16 - S are the previous window's last frames, substituted at every denoising step
exactly as the offline ``--overlap K`` path does (the same ``ChunkSubmitter`` and overlap
program: pipeline/dispatch.py, diffusion/overlap.py). S = 16 is LatentSync's disjoint chunks.
The windows END at multiples of S (``timeline.window_at(..., lead_in=True)``: the first window
is frame 0 repeated K times + frames 0..S-1), so a window is launched as soon as the audio
windows of its S new frames are final (audio_online.py: 82.5 ms of audio past them), and the
first frame needs S frames of audio, not 16. ``lead_in=False`` uses the offline ``--overlap``
layout instead (the first window waits for 16 frames).

One worker thread per session: when the next window's audio is final it builds the window as the
offline engine does (ping-pong source frames, the nearest face as a stand-in, window index -> VAE
keys, the last window padded), submits it (the avatar's cached VAE moments replace the encoder
when it has them) and, while the device computes, pastes the previous window's faces back into
its frames and queues them. So the output equals the offline engine's wherever the audio windows
are equal (tests/live/test_stream.py forces them equal: stride 16 vs the plain engine, strides 8 and 4
vs ``--overlap`` 8 and 12 with ``JobHooks(lead_in=True)``).

Pacing and back-pressure: ``next_frame`` hands frames out at the video rate (frame i is due
``i / fps`` after the first frame); a frame that is ready late re-bases the clock (never
dropped) and ``status()`` says ``behind``; after that, while frames are ready early and the audio
arrives in real time, the clock catches up by at most 20 % of a frame interval per frame
(``_pace``). The output queue holds ``queue_frames`` frames (the worker waits when it is full);
audio pushed but not yet turned into frames is bounded by ``max_pending_seconds`` (``push``
raises ``StreamOverflow`` past it).

Latency (``metrics()``, ``status()``; latency.py): for frame i, the time from the arrival of the
audio sample at its timestamp to the moment it is handed out, split into waiting for audio,
look-ahead, compute and pacing.

``close()`` returns at once: the worker is told to stop and abandons what it was doing (a device
call in flight finishes on the device and is discarded); it frees its pool when it ends.
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
from lipsync_jax.live.latency import latency_metrics
from lipsync_jax.pipeline.dispatch import ChunkSubmitter, ChunkWork, chunk_inputs, paste_faces
from lipsync_jax.pipeline.job import NUM_FRAMES, OptionError, Sampling, parse_int, parse_seed
from lipsync_jax.pipeline.timeline import window_at, window_frames

POLL_SECONDS = 0.05
RECENT_FRAMES = 4500  # frames whose metadata metrics() keeps besides the first window (3 minutes at 25 fps)
PACE_SLACK = 0.002  # seconds a paced frame may come after its due time without re-basing the clock
CATCH_UP = 0.2  # at most this fraction of a frame interval earlier per frame when the clock catches up
REALTIME_SLACK = 0.1  # seconds audio may come ahead of real time and still count as a real-time stream
_END = object()


class StreamOverflow(Exception):
    """More audio is waiting than ``max_pending_seconds``: the producer cannot keep up with a burst."""


class StreamClosed(Exception):
    """The session was closed (or failed); no more frames."""


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    sampling: Sampling = Sampling()  # steps, guidance, ...; its overlap comes from ``stride``
    seed: int = 1247
    stride: int = NUM_FRAMES  # new frames per window, 1..16 (windows share 16 - stride frames)
    lead_in: bool = True  # windows end at multiples of the stride (False: the offline --overlap layout)
    pace: bool = True  # hand frames out at the video rate (False: as soon as they are ready)
    queue_frames: int = 48  # frames held between the worker and the consumer
    max_pending_seconds: float = 60.0  # audio accepted but not yet turned into frames
    # test/bench hook: the windows of output frames from elsewhere (e.g. the offline AudioPlan.windows)
    frame_windows: Callable[[np.ndarray], np.ndarray] | None = None
    # sees each window's generated new faces ((k, R, R, 3) float32) like JobHooks.on_chunk
    on_chunk: Callable[[int, int, np.ndarray], None] | None = None
    # sees each window's new frames' audio windows (window index, (k, rows * layers, d))
    on_windows: Callable[[int, np.ndarray], None] | None = None

    def __post_init__(self):
        object.__setattr__(self, "stride", parse_int("stride", self.stride, low=1, high=NUM_FRAMES))
        object.__setattr__(self, "seed", parse_seed(self.seed))
        if self.sampling.overlap not in (0, NUM_FRAMES - self.stride):
            raise OptionError(f"overlap {self.sampling.overlap}: live sessions take the overlap from the stride "
                              f"(stride {self.stride}: overlap {NUM_FRAMES - self.stride})")

    @property
    def program_sampling(self) -> Sampling:
        """The sampling setting of the session's device program (overlap = 16 - stride)."""
        return dataclasses.replace(self.sampling, overlap=NUM_FRAMES - self.stride)


@dataclasses.dataclass
class LiveFrame:
    index: int  # output frame number
    timestamp: float  # seconds into the stream (index / fps)
    image: np.ndarray  # (H, W, 3) uint8 RGB
    chunk: int  # the window that wrote it
    generated: bool  # the face was lip-synced (False: no face here, the source frame as is)
    window_start: int = 0  # the first frame that window wrote
    ready_at: float = 0.0  # perf_counter when the worker queued it
    emitted_at: float = 0.0  # perf_counter when next_frame handed it out
    audio_arrived_at: float = 0.0  # perf_counter when the audio sample at ``timestamp`` was pushed
    audio_end_at: float = 0.0  # ... when the last sample of its window's new frames was pushed
    final_at: float = 0.0  # ... when its window's audio windows became final (look-ahead arrived)

    @property
    def latency(self) -> float:
        return self.emitted_at - self.audio_arrived_at


@dataclasses.dataclass
class _Window:
    index: int
    first: int  # window position 0's output frame (negative in a lead-in window)
    start: int  # first frame it writes
    stop: int
    sources: list[int]  # source frames of the written frames
    audio_end_at: float
    final_at: float
    began: float
    output: object = None  # device array of the generated faces (None: no face in its written frames)
    build_seconds: float = 0.0


class StreamSession:
    def __init__(self, engine, avatar, options: StreamOptions | None = None, *, owns_avatar: bool = False):
        self.engine, self.avatar = engine, avatar
        self.options = options = options or StreamOptions()
        models = engine.models
        self.fps = float(models.fps)
        self.f = models.num_frames
        self.stride = options.stride
        self.overlap = self.f - self.stride
        self.submitter = ChunkSubmitter(engine, options.program_sampling, options.seed,
                                        moments=getattr(avatar, "moments", None))
        if self.overlap and self.submitter.batch != 1:  # padding windows would break the chain of tails
            raise OptionError(f"stride {self.stride}: overlapping windows run one window per device call "
                              f"(chunk_batch 1), the engine's program takes {self.submitter.batch}")
        self.owns_avatar = owns_avatar
        self.audio = OnlineAudioFeatures(models.audio, self.fps, models.audio_feat_length,
                                         windows=options.sampling.audio_windows)
        self.submitter.compile()  # at once when warmed (warm_up); else the compile happens here, before any audio
        self.out: queue.Queue = queue.Queue(maxsize=max(self.f, int(options.queue_frames)))
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.closed = False
        self.ended_output = False
        self.ended_at: float | None = None  # perf_counter of finish()
        self._arrivals: collections.deque = collections.deque()  # (cumulative samples, perf_counter)
        self.frames_done = 0  # frames queued by the worker
        self.frames_emitted = 0
        self.windows_done = 0
        self.window_seconds: collections.deque = collections.deque(maxlen=8)  # (frames, compute seconds)
        # metadata of emitted frames (images dropped): the first window's and the last RECENT_FRAMES
        self._first_emitted: list[LiveFrame] = []
        self._recent_emitted: collections.deque = collections.deque(maxlen=RECENT_FRAMES)
        self._clock: tuple[float, int] | None = None  # (perf_counter, frame index) of the pacing clock
        self._spare: collections.deque = collections.deque(maxlen=max(8, 2 * self.stride))  # due - ready
        self._audio_zero: float | None = None  # audio clock: arrival of frame 0's sample minus its timestamp
        self._last_emit = 0.0
        self.late_frames = 0
        self.opened_at = time.perf_counter()
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, engine.restore_threads)),
                                                           thread_name_prefix="live-restore")
        self._life = threading.Lock()  # closed / worker_done / released
        self._worker_done = False
        self._released = False
        self.worker = threading.Thread(target=self._run, name=f"live-session-{id(self):x}", daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------ input side
    def push(self, samples, dtype: str | None = None) -> None:
        """Append audio (16 kHz mono; float32 / int16 array, or raw bytes of ``dtype``); NaN or
        infinite samples are refused (ValueError)."""
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
            self.ended_at = time.perf_counter()
            self.cond.notify_all()

    def _check_open(self) -> None:
        if self.closed or self.stop.is_set():
            raise StreamClosed("the live session is closed" + (f" ({self.error})" if self.error else ""))

    def _arrival_of(self, sample: int) -> float:
        """When ``sample`` arrived (the end of the stream if it never did)."""
        with self.cond:
            counts = [c for c, _ in self._arrivals]
            k = bisect.bisect_right(counts, sample)
            if k >= len(self._arrivals):
                if self.ended_at is not None:
                    return self.ended_at
                return self._arrivals[-1][1] if self._arrivals else self.opened_at
            return self._arrivals[k][1]

    def _forget_arrivals(self, sample: int) -> None:
        with self.cond:
            while len(self._arrivals) > 1 and self._arrivals[1][0] <= sample:
                self._arrivals.popleft()

    # ------------------------------------------------------------------ worker
    def _next_window(self, index: int, wait: bool):
        """(first, start, stop) of window ``index`` once its audio is final; _END after the last
        one; None when not yet (after waiting a poll when ``wait``)."""
        first, start, stop = window_at(index, self.f, self.overlap, self.options.lead_in)
        with self.cond:
            if self.audio.ended:
                total = int(self.audio.num_frames)
                return _END if start >= total else (first, start, min(stop, total))
            if self.audio.ready_frames() >= stop:
                return first, start, stop
            if wait:
                self.cond.wait(POLL_SECONDS)
        return None

    def _launch(self, index: int, first: int, start: int, stop: int) -> _Window:
        began = time.perf_counter()
        needed = self.audio.samples_needed(stop - 1)
        window = _Window(index, first, start, stop, sources=[], began=began,
                         audio_end_at=self._arrival_of(int(stop * SAMPLE_RATE / self.fps) - 1),
                         final_at=self._arrival_of(needed - 1))
        frames = window_frames(first, stop)
        sources = np.array([self.avatar.source_of(int(i)) for i in frames])
        window.sources = [int(s) for s in sources[start - first:]]
        windows = self.options.frame_windows or self.audio.windows
        chunk = ChunkWork(index, start, records=[], offset=start - first)
        if any(self.avatar.has_face[s] for s in window.sources):
            stand_in = lambda s: self.avatar.record(self.avatar.stand_in(s)).aligned.face  # noqa: E731
            chunk.faces, chunk.audio = chunk_inputs(sources, stand_in, windows, frames, self.f)
            new_windows = chunk.audio[start - first:stop - first]
        else:
            new_windows = windows(np.arange(start, stop))
        self.audio.release_before(max(0, window_at(index + 1, self.f, self.overlap, self.options.lead_in)[0]))
        if self.options.on_windows is not None:
            self.options.on_windows(index, new_windows)
        if chunk.faces is not None:
            window.output = self.submitter.submit([chunk])
        window.build_seconds = time.perf_counter() - began
        return window

    def _restore(self, source: int, face) -> tuple[np.ndarray, bool]:
        record = self.avatar.record(source)
        if face is None or record.aligned is None:
            return record.frame, False
        return paste_faces(record.frame, [(record.aligned, face)]), True

    def _complete(self, window: _Window) -> None:
        began = time.perf_counter()
        generated = None
        count = len(window.sources)
        if window.output is not None:
            offset = window.start - window.first
            generated = np.asarray(window.output)[0][offset:offset + count]
            if self.options.on_chunk is not None:
                self.options.on_chunk(window.index, window.start, generated)
        jobs = [self._pool.submit(self._restore, s, None if generated is None else generated[j])
                for j, s in enumerate(window.sources)]
        images = [job.result() for job in jobs]
        # compute time of the window (windows + launch, device wait, restore), not the waits for audio or space
        self.window_seconds.append((count, window.build_seconds + time.perf_counter() - began))
        ready = time.perf_counter()
        for j, (image, made) in enumerate(images):
            i = window.start + j
            self._put(LiveFrame(i, i / self.fps, image, window.index, made, window.start, ready_at=ready,
                                audio_arrived_at=self._arrival_of(int(i * SAMPLE_RATE / self.fps)),
                                audio_end_at=window.audio_end_at, final_at=window.final_at))
            self.frames_done += 1
        self.windows_done += 1
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
        pending, index = None, 0
        try:
            while not self.stop.is_set():
                bounds = self._next_window(index, wait=pending is None)
                if bounds is None:
                    if pending is not None:  # no new audio yet: finish what the device has
                        self._complete(pending)
                        pending = None
                    continue
                if bounds is _END:
                    break
                window = self._launch(index, *bounds)  # launched: the device works while we restore
                if pending is not None:
                    self._complete(pending)
                pending, index = window, index + 1
            if pending is not None and not self.stop.is_set():
                self._complete(pending)
            self._put(_END)
        except StreamClosed:
            pass
        except BaseException as error:  # noqa: BLE001 - reported to the consumer
            if not self.stop.is_set():  # after close() whatever was in flight is abandoned
                self.error = error
            self.stop.set()
        finally:
            with self._life:
                self._worker_done = True
                release = self.closed
            if release:
                self._release()

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
        (self._first_emitted if len(self._first_emitted) < self.stride else self._recent_emitted).append(meta)
        return item

    def _pace(self, frame: LiveFrame) -> float:
        """Wait until the frame is due on the pacing clock; returns the time it is handed out.

        The clock is frame i due at ``clock + (i - clock_frame) / fps``. A frame that becomes
        ready after its due time re-bases the clock on it (later; never dropped). Handing out late
        for other reasons (a sleep that overshoots, a busy consumer) leaves the clock alone: the
        next frames come sooner, at most ``CATCH_UP`` faster than the video rate. While every frame
        of the last two windows was ready before its due time and the audio arrives in real time,
        the clock moves earlier by up to ``CATCH_UP`` of a frame interval per frame, so one slow
        window does not raise the latency for good."""
        if not self.options.pace:
            return time.perf_counter()
        if self._clock is None:
            now = time.perf_counter()
            self._clock, self._last_emit = (now, frame.index), now
            self._audio_zero = frame.audio_arrived_at - frame.timestamp
            self._spare.append(0.0)
            return now
        due = self._clock[0] + (frame.index - self._clock[1]) / self.fps
        spare = min(min(self._spare) if len(self._spare) == self._spare.maxlen else 0.0, due - frame.ready_at)
        realtime = frame.audio_arrived_at - self._audio_zero >= frame.timestamp - REALTIME_SLACK
        if spare > PACE_SLACK and realtime:
            shift = min(spare - PACE_SLACK, CATCH_UP / self.fps)
            self._clock = (self._clock[0] - shift, self._clock[1])
            self._spare = collections.deque((x - shift for x in self._spare), maxlen=self._spare.maxlen)
            due -= shift
        if frame.ready_at > due + PACE_SLACK:  # the frame itself is late: the clock moves to it
            if frame.ready_at - due > 1.0 / self.fps:
                self.late_frames += 1
            due = max(frame.ready_at, self._last_emit + 1.0 / self.fps)
            self._clock = (due, frame.index)
        wait_until = max(due, self._last_emit + (1.0 - CATCH_UP) / self.fps)
        while not self.stop.is_set() and time.perf_counter() < wait_until:
            time.sleep(min(POLL_SECONDS, max(0.0, wait_until - time.perf_counter())))
        now = time.perf_counter()
        self._spare.append(max(0.0, due - frame.ready_at))
        self._last_emit = now
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
        """State (realtime / behind / ended / closed / failed), the stride, generation rate of the
        recent windows, and the latency figures of ``metrics()`` (one achieved-fps figure)."""
        recent = list(self.window_seconds)[-4:]
        seconds = sum(s for _, s in recent)
        generation_fps = sum(n for n, _ in recent) / seconds if recent and seconds > 0 else None
        behind = generation_fps is not None and generation_fps < self.fps * 0.98
        state = ("failed" if self.error is not None else "closed" if self.closed else
                 "ended" if self.ended_output else "behind" if behind else "realtime")
        metrics = self.metrics()
        return dict(state=state, stride=self.stride, target_fps=self.fps, achieved_fps=metrics.get("achieved_fps"),
                    generation_fps=generation_fps, first_frame_latency=metrics.get("first_frame_latency"),
                    latency_median=metrics.get("steady_latency_median"),
                    latency_p95=metrics.get("steady_latency_p95"), jitter=metrics.get("jitter"),
                    latency_split=metrics.get("split"), frames_emitted=self.frames_emitted,
                    frames_ready=self.frames_done, windows=self.windows_done, late_frames=self.late_frames,
                    queued_frames=self.out.qsize(), audio_received_s=self.audio.received / SAMPLE_RATE,
                    audio_pending_s=max(0.0, self.audio.received / SAMPLE_RATE - self.frames_done / self.fps),
                    error=None if self.error is None else f"{type(self.error).__name__}: {self.error}")

    def metrics(self) -> dict:
        """Latency accounting over the frames handed out so far (seconds; latency.py)."""
        frames = self._first_emitted + list(self._recent_emitted)
        return dict(latency_metrics(frames, self.fps, skip=self.stride), stride=self.stride,
                    late_frames=self.late_frames)

    # ------------------------------------------------------------------ closing
    def close(self, timeout: float = 0.0) -> None:
        """Stop now: the worker abandons its window (a device call in flight finishes on the device,
        unread), queued frames are dropped, the pool (and the avatar if the session owns it) freed
        when the worker has ended. Returns at once; ``timeout`` > 0 waits that long for the worker."""
        with self._life:
            if self.closed:
                return
            self.closed = True
            release = self._worker_done
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        self._drain()
        if not release and timeout > 0:
            self.worker.join(timeout)
        if release:
            self._release()

    def _drain(self) -> None:
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                return

    def _release(self) -> None:
        with self._life:
            if self._released:
                return
            self._released = True
        self._pool.shutdown(wait=True, cancel_futures=True)  # idle: only the (ended) worker submits to it
        self._drain()
        if self.owns_avatar:
            self.avatar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

