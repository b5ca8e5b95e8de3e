"""One job through the engine as a stream: three threads joined by bounded queues.

    reader      decode the video once (ffmpeg pipe) + the face pass, frame by frame; for a
                ping-pong loop also into the compressed ``FrameStore``
    dispatcher  cut the output into 16-frame chunks (LatentSync's timeline), choose stand-in
                faces, stack ``engine.batch`` chunks that have a face and launch the device
                program (asynchronous: it returns at once)
    writer      wait for a batch's faces, restore them into the frames (thread pool), H.264 encode

so decode/alignment of batch i+1 and restore/encode of batch i-1 run while the device computes
batch i. Memory is bounded by the queue sizes (a few chunk batches of frames), whatever the
length of the video or the audio. Stand-ins: a frame without a face borrows the nearest frame
with one; in a chunk that has a face the nearest is always within ``f - 1`` frames, so the
dispatcher keeps only a window of ``f - 1`` frames behind and ahead (the result equals the
whole-video rule of ``nearest_face_indices``).

Several faces (``job.face="all"`` / ``face_audio``, pipeline/face_choice.py): the face pass gives
a tuple per frame (one face or None per chosen person, a *lane*); the dispatcher makes one
``ChunkWork`` per chunk and lane (each lane its own stand-ins and audio), stacks them all on the
batch axis of the same program calls, and the writer pastes a chunk's lanes into each frame in
lane order (a lane whose person is absent from a frame leaves that frame alone).

Overlapping windows (``job.overlap`` K > 0, one face, one device): the output is cut into
16-frame windows with stride 16 - K (``diffusion.window_starts``); each window's faces and audio
cover all its 16 frames, but only its new frames (all of the first window, frames K.. of the
others) are written. The windows of a call are consecutive; the tail trajectory the program
returns stays on the device and links the next call's first window when it follows (a window
without any face, or a partial batch, breaks the chain: the next window starts unlinked).

Start of a job: the audio's length gives the output frame count (``_predicted_frames``), so the
Whisper features are computed in a thread while the calling thread runs the face pre-pass; the
face backends come warm from the engine's ``LandmarkerPool`` (``landmarker_pool(engine)``). A job
for one person (and no frame store) starts the reader at once with the plain single-face tracker,
*speculatively*: its records wait in the reader (at most one queue's worth) until the pre-pass
has decided; when the video has at most one face track (the plan is that very tracker) they go
on, else they are dropped and the reader starts over with the plan's face pass.

Stopping: the calling thread waits on the workers; an exception there (Ctrl-C, SIGTERM turned
into an exception by infer.py) or in a worker sets the stop event, every worker leaves its loop
(ffmpeg processes are killed), and the work folder beside the output is deleted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import queue
import shutil
import tempfile
import threading
import time
import weakref

import numpy as np
from tqdm import tqdm

from lipsync_jax.audio.features import AudioFeatureExtractor, frame_chunk_indices
from lipsync_jax.audio.load import TARGET_RATE
from lipsync_jax.audio.whisper_mel import FRAMES_PER_EMBEDDING, HOP_LENGTH
from lipsync_jax.media import VideoWriter, mux_audio, read_frames
from lipsync_jax.pipeline.face_choice import (FacePlan, LandmarkerPool, face_choices, lane_audio_plans, lane_faces,
                                               parse_face_audio, plan_faces)
from lipsync_jax.pipeline.faces import nearest_face_indices
from lipsync_jax.pipeline.inputs import check_audio, check_inputs
from lipsync_jax.pipeline.program import start_noise
from lipsync_jax.pipeline.restore import paste_generated_face
from lipsync_jax.pipeline.store import FrameStore, SourceRecord
from lipsync_jax.pipeline.timeline import chunk_bounds, output_frame_count, pad_to_chunk, pingpong_indices, window_bounds
from lipsync_jax.pipeline.timing import StageTimer

_END = object()
POLL_SECONDS = 0.1
JOIN_SECONDS = 30.0  # how long a stopped job waits for its workers before cleaning up anyway


class _Stopped(Exception):
    """Raised inside a worker when the job is stopping."""


_POOLS: "weakref.WeakKeyDictionary[object, LandmarkerPool]" = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def landmarker_pool(engine) -> LandmarkerPool:
    """The engine's warm face backends (kept between its jobs, dropped with the engine)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(engine)
        if pool is None:
            pool = _POOLS[engine] = LandmarkerPool()
        return pool


def _predicted_frames(models, samples: np.ndarray, fps: float) -> int | None:
    """The job's output frame count from the audio's length alone (Whisper keeps n // 160 mel
    frames, // 2 rows per 30 s window: ``audio.features``), or None for another audio model."""
    audio = models.audio
    if not isinstance(audio, AudioFeatureExtractor):
        return None
    total, window = len(samples) // HOP_LENGTH, int(audio.config.n_frames)
    rows = sum(min(window, total - start) // FRAMES_PER_EMBEDDING for start in range(0, total, window))
    if rows < 1:
        return None
    windows = frame_chunk_indices(rows, fps, models.audio_feat_length)
    return output_frame_count(len(samples), TARGET_RATE, fps, len(windows))


@dataclasses.dataclass
class ChunkWork:
    index: int  # chunk number in the output (its VAE keys: fold_in(key, index))
    start: int  # first output frame
    records: list[SourceRecord]  # the chunk's real frames, in output order
    faces: np.ndarray | None = None  # (f, R, R, 3) uint8 UNet input faces; None: no face, no generation
    audio: np.ndarray | None = None  # (f, T, D) audio windows
    generated: np.ndarray | None = None  # (f, R, R, 3) float32 after the device program
    lane: int = 0  # which chosen face (several faces: one ChunkWork per chunk and lane)
    offset: int = 0  # overlapping windows: the first written frame's place in the window (0 or K)


@dataclasses.dataclass
class ChunkGroup:
    chunks: list[ChunkWork]  # consecutive chunks (a chunk's lanes together), in output order
    output: object = None  # device array(s) of the generated faces of the chunks with faces


class _Job:
    def __init__(self, engine, job, checked, timer: StageTimer):
        self.engine, self.job, self.timer = engine, job, timer
        self.models = engine.models
        self.f = self.models.num_frames
        self.checked = checked
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        depth = max(1, engine.options.queue_batches)
        # the reader runs one chunk batch (+ the stand-in lookahead) ahead of the dispatcher
        self.sources: queue.Queue = queue.Queue(maxsize=engine.batch * self.f + self.f)
        self.groups: queue.Queue = queue.Queue(maxsize=depth)
        self.first_frame_at: float | None = None
        self.kept = 0
        self.batches = 0
        self.num_source: int | None = None
        self.store: FrameStore | None = None
        self.face_plan = None  # pipeline/face_choice.FacePlan (None: a custom face pass factory)
        self.lanes = 1
        self.overlap = int(getattr(job, "overlap", 0) or 0)  # frames shared by consecutive windows
        self.tail, self.tail_window = None, None  # overlap: the last full call's tail (device) and window
        self.planned = threading.Event()  # set once self.face_plan is decided (speculative reader)
        self.reader_pass = None  # the reader's face pass (closed by run())

    # ------------------------------------------------------------------ queue helpers
    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                pass

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=POLL_SECONDS)
            except queue.Empty:
                pass

    def worker(self, name: str, fn) -> threading.Thread:
        def body():
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as error:  # noqa: BLE001 - handed to the calling thread
                self.errors.append(error)
                self.stop.set()
        thread = threading.Thread(target=body, name=f"lipsync-{name}", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ reader
    def read(self, n_out: int, speculative: bool = False) -> None:
        """Decode + face pass (``self.reader_pass``) into ``self.sources``. ``speculative``: the
        pass is the plain tracker started before the plan (see the module docstring)."""
        video, fps = self.checked.video, float(self.job.fps)
        held: list[SourceRecord] | None = [] if speculative else None
        while True:  # one pass; a second one when the speculative pass was the wrong one
            face_pass, restart = self.reader_pass, False
            frames = read_frames(video.path, fps, max_frames=n_out, info=video)
            try:
                index = 0
                while True:
                    if held is not None and (len(held) >= self.sources.maxsize or self.planned.is_set()):
                        restart = not self.settle(held)
                        held = None
                        if restart:
                            break
                    with self.timer.stage("video_decode"):
                        frame = next(frames, None)
                    if frame is None:
                        break
                    if self.stop.is_set():
                        raise _Stopped
                    with self.timer.stage("face_alignment", 1):
                        aligned = face_pass(frame)
                    record = SourceRecord(index, frame, aligned)
                    if self.store is not None:
                        with self.timer.stage("frame_store", 1):
                            self.store.put(record)
                    if held is not None:
                        held.append(record)
                    else:
                        self.put(self.sources, record)
                    index += 1
                if held is not None:  # the whole video was read before the plan came
                    restart = not self.settle(held)
                    held = None
                if not restart:
                    self.timer.count("video_decode", index)
                    face_pass.check_found()
            finally:
                frames.close()
            if not restart:
                break
            self.reader_pass = None
            face_pass.close()
            self.reader_pass = self.new_face_pass()
        self.put(self.sources, _END)

    def settle(self, held: list[SourceRecord]) -> bool:
        """Speculative reader: wait for the plan; hand the held records on and return True when it
        is the plain tracker the reader used, else drop them and return False (start over)."""
        while not self.planned.wait(POLL_SECONDS):
            if self.stop.is_set():
                raise _Stopped
        if self.stop.is_set():
            raise _Stopped
        if not self.face_plan.plain_tracker:
            return False
        for record in held:
            self.put(self.sources, record)
        return True

    def refill_store(self, count: int) -> None:
        """The rare case: the video has fewer frames than its container said, and the loop needs
        random access that was not planned: decode and align it again (deterministic) into a store."""
        self.store = FrameStore(self.work_dir)
        face_pass = self.new_face_pass()
        try:
            for index, frame in enumerate(read_frames(self.checked.video.path, float(self.job.fps), max_frames=count,
                                                      info=self.checked.video)):
                if self.stop.is_set():
                    raise _Stopped
                self.store.put(SourceRecord(index, frame, face_pass(frame)))
        finally:
            face_pass.close()

    def new_face_pass(self):
        """The engine's custom face pass (when its factory gives one), or the job's own (pre-pass
        and face choice on the first call)."""
        job = self.job
        if self.engine.face_pass_factory is not None:
            face_pass = self.engine.face_pass_factory(self.models.resolution, job.face_backend, job.video_path)
            if face_pass is not None:
                choices = face_choices(job.face, parse_face_audio(job.face_audio))
                if job.face_audio or (choices is not None and (len(choices) > 1 or choices == ["all"])):
                    face_pass.close()
                    raise ValueError("several faces (face='all' / face_audio) need the engine's own face pass "
                                     "(the face pass factory gave a single-face pass)")
                return face_pass
        if self.face_plan is None:
            self.face_plan = plan_faces(self.models.resolution, job, max_frames=self.n_out,
                                        landmarkers=landmarker_pool(self.engine))
        return self.face_plan.new_face_pass()

    def face_tracks(self) -> tuple[int, ...]:
        plan = self.face_plan
        return () if plan is None or plan.track_ids is None else tuple(plan.track_ids)

    # ------------------------------------------------------------------ dispatcher
    def dispatch(self, program, noise, key_data) -> None:
        f, n_out, batch = self.f, self.n_out, self.engine.batch
        window: dict[int, SourceRecord] = {}
        read = 0
        eof = False
        mapping = None

        def pull_until(index: int) -> None:
            nonlocal read, eof
            while not eof and read <= index:
                record = self.get(self.sources)
                if record is _END:
                    eof = True
                    self.num_source = read
                else:
                    window[record.index] = record
                    read += 1

        def record_of(source: int) -> SourceRecord:
            return window[source] if source in window else self.store.get(source)

        def has_face(source: int, lane: int) -> bool:
            if source in window:
                return lane_faces(window[source].aligned)[lane] is not None
            return self.store.has_face_at(source, lane)

        pending: list[ChunkWork] = []
        with_faces = 0
        overlap, previous_had_face = self.overlap, False
        bounds = window_bounds(n_out, f, overlap) if overlap else [(a, a, b) for a, b in chunk_bounds(n_out, f)]
        for index, (first, start, stop) in enumerate(bounds):  # window frames first..stop, written start..stop
            pull_until(stop - 1 + f - 1)
            if mapping is None and eof and self.num_source < n_out:
                if self.store is None:
                    self.refill_store(self.num_source)
                self.store.flush()
                mapping = pingpong_indices(self.num_source, n_out)
            sources = np.arange(first, stop) if mapping is None else mapping[first:stop]
            with self.timer.stage("batch_assembly", stop - start):
                window_records = [record_of(int(s)) for s in sources]
                records = window_records[start - first:]  # the frames this window writes
                lane_has_face = [any(lane_faces(r.aligned)[lane] is not None for r in records)
                                 for lane in range(self.lanes)]
                if overlap and lane_has_face[0] and not previous_had_face and with_faces:
                    self.launch(program, pending, noise, key_data)  # the chain of windows breaks here
                    pending, with_faces = [], 0
                previous_had_face = lane_has_face[0]
                for lane in range(self.lanes):
                    work = ChunkWork(index, start, records, lane=lane, offset=start - first)
                    if lane_has_face[lane]:
                        known = read if not eof else self.num_source
                        lo, hi = max(0, int(sources.min()) - (f - 1)), min(known, int(sources.max()) + f)
                        near = lo + nearest_face_indices(np.array([has_face(s, lane) for s in range(lo, hi)]))
                        padded = pad_to_chunk(sources, f)
                        work.faces = np.stack([lane_faces(record_of(int(near[s - lo])).aligned)[lane].face
                                               for s in padded])
                        work.audio = self.lane_audio[lane].windows(pad_to_chunk(np.arange(first, stop), f))
                        with_faces += 1
                    pending.append(work)
            for old in [k for k in window if k < stop - overlap - (f - 1)]:  # the next window's stand-ins
                del window[old]
            flush = len(pending) >= (2 * batch + 2) * self.lanes and not (overlap and previous_had_face)
            if with_faces >= batch or flush:
                self.launch(program, pending, noise, key_data)
                pending, with_faces = [], 0
        if pending:
            self.launch(program, pending, noise, key_data)
        if not eof:  # the audio ended first: the reader may still be waiting to hand over frames
            self.num_source = None
        self.put(self.groups, _END)

    def launch(self, program, chunks: list[ChunkWork], noise, key_data) -> None:
        work = [c for c in chunks if c.faces is not None]
        group = ChunkGroup(chunks)
        batch, outputs = self.engine.batch, []
        for first in range(0, len(work), batch):  # several faces: a chunk's lanes may overflow one call
            part = work[first:first + batch]
            padded = part + [part[-1]] * (batch - len(part))
            with self.timer.stage("dispatch", sum(len(c.records) for c in part)):
                args = (self.engine.unet_params, self.engine.vae_params, np.stack([c.faces for c in padded]),
                        np.stack([c.audio for c in padded]), np.array([c.index for c in padded], np.int32),
                        noise, key_data)
                if self.overlap:  # link the first window to the previous call's last one when it follows it
                    linked = self.tail is not None and self.tail_window == part[0].index - 1
                    output, tail = program(*args, self.tail if linked else None, linked)
                    full = len(part) == batch  # padding windows would hand on the wrong tail
                    self.tail, self.tail_window = (tail, part[-1].index) if full else (None, None)
                    outputs.append(output)
                else:
                    outputs.append(program(*args))
            self.batches += 1
        if outputs:
            group.output = outputs[0] if len(outputs) == 1 else outputs
        self.put(self.groups, group)

    # ------------------------------------------------------------------ writer
    def write(self, writer: VideoWriter, bar) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(self.engine.restore_threads,
                                                     thread_name_prefix="lipsync-restore")
        try:
            while True:
                group = self.get(self.groups)
                if group is _END:
                    return
                if group.output is not None:
                    with self.timer.stage("device_wait"):
                        outputs = group.output if isinstance(group.output, list) else [group.output]
                        generated = np.concatenate([np.asarray(o) for o in outputs])
                    for j, chunk in enumerate(c for c in group.chunks if c.faces is not None):
                        chunk.generated = generated[j][chunk.offset:] if chunk.offset else generated[j]
                        if self.job.on_chunk is not None:
                            self.job.on_chunk(chunk.index, chunk.start, chunk.generated[:len(chunk.records)])
                for _, same_chunk in itertools.groupby(group.chunks, key=lambda c: c.index):
                    same_chunk = list(same_chunk)
                    lanes = [c for c in same_chunk if c.generated is not None]
                    jobs = []
                    for j, record in enumerate(same_chunk[0].records):
                        faces = lane_faces(record.aligned)
                        pastes = [(faces[c.lane], c.generated[j]) for c in lanes if faces[c.lane] is not None]
                        if pastes:
                            jobs.append(pool.submit(self.restore, record.frame, pastes))
                        else:
                            self.kept += 1
                            jobs.append(record.frame)
                    for item in jobs:
                        frame = item.result() if isinstance(item, concurrent.futures.Future) else item
                        if self.stop.is_set():
                            raise _Stopped
                        with self.timer.stage("video_encode", 1):
                            writer.write(frame)
                        if self.first_frame_at is None:
                            self.first_frame_at = time.perf_counter()
                        bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def restore(self, frame: np.ndarray, pastes) -> np.ndarray:
        """Paste each (aligned face, generated face) into the frame, in lane order."""
        with self.timer.stage("restore", 1):
            for aligned, face in pastes:
                frame = paste_generated_face(frame, face, aligned)
            return frame

    # ------------------------------------------------------------------ the whole job
    def run(self):
        from lipsync_jax.pipeline.engine import InferenceResult
        from lipsync_jax.pipeline.run import audio_plan, load_job_audio

        job, timer, models = self.job, self.timer, self.models
        begin = time.perf_counter()
        overlap = (self.overlap,) if self.overlap else ()
        program = self.engine.program(job.num_steps, job.guidance_scale, *overlap)
        compile_thread = self.worker("compile", lambda: program.compile(self.engine.unet_params,
                                                                        self.engine.vae_params))
        self.work_dir = tempfile.mkdtemp(prefix=".lipsync_", dir=os.path.dirname(os.path.abspath(job.output_path)))
        threads = [compile_thread]
        try:
            with timer.stage("audio"):
                samples = load_job_audio(job.audio_path, float(job.fps), job.max_seconds)

            def whisper():
                with timer.stage("audio"):
                    self.audio = audio_plan(models, samples, float(job.fps))

            predicted = _predicted_frames(models, samples, float(job.fps))
            audio_thread = None
            if predicted is None:
                whisper()
            else:  # the Whisper features while the face pre-pass runs here
                audio_thread = self.worker("audio", whisper)
                threads.append(audio_thread)
            self.n_out = n_out = self.audio.num_frames if predicted is None else predicted
            if self.checked.video.frame_count_at(float(job.fps)) < n_out + int(job.fps):
                self.store = FrameStore(self.work_dir)  # probably a ping-pong loop: keep every frame
            choices = face_choices(job.face, parse_face_audio(job.face_audio))
            speculate = (predicted is not None and self.engine.face_pass_factory is None and self.store is None
                         and choices is not None and len(choices) == 1)
            if speculate:  # the plain tracker's pass starts now; the pre-pass decides whether it stays
                self.reader_pass = FacePlan(models.resolution, job.face_backend, job.video_path, None,
                                            landmarkers=landmarker_pool(self.engine)).new_face_pass()
                threads.append(self.worker("reader", lambda: self.read(n_out, speculative=True)))
            with timer.stage("setup"):  # the face pre-pass runs while the program compiles
                if speculate:
                    self.face_plan = plan_faces(models.resolution, job, max_frames=n_out,
                                                landmarkers=landmarker_pool(self.engine))
                else:
                    self.reader_pass = self.new_face_pass()
            self.planned.set()
            if audio_thread is not None:
                while audio_thread.is_alive():
                    audio_thread.join(POLL_SECONDS)
                if self.errors:
                    raise self.errors[0]
                if self.audio.num_frames != n_out:
                    raise RuntimeError(f"internal: {self.audio.num_frames} audio frames, {n_out} predicted")
            timer.count("audio", n_out)
            self.lane_audio = [self.audio]
            if self.face_plan is not None and self.face_plan.num_lanes > 1:
                self.lanes = self.face_plan.num_lanes
                if self.overlap:
                    raise ValueError(f"overlapping windows (overlap {self.overlap}) lip-sync one face; "
                                     f"{self.lanes} faces were chosen")
                with timer.stage("audio"):
                    self.lane_audio = lane_audio_plans(models, self.face_plan, self.audio, float(job.fps))
            noise, key_data = program.put_job(*start_noise(models, job.seed))
            silent = os.path.join(self.work_dir, "video.mp4")
            video = self.checked.video
            with tqdm(total=n_out, desc="Lip sync", unit="frame", disable=not job.progress) as bar, \
                    VideoWriter(silent, video.width, video.height, float(job.fps), crf=job.crf,
                                preset=job.preset) as writer:
                if not speculate:
                    threads.append(self.worker("reader", lambda: self.read(n_out)))
                threads.append(self.worker("dispatcher", lambda: self.dispatch(program, noise, key_data)))
                writer_thread = self.worker("writer", lambda: self.write(writer, bar))
                threads.append(writer_thread)
                try:
                    while writer_thread.is_alive() and not self.stop.is_set():
                        writer_thread.join(POLL_SECONDS)
                finally:  # stop the others (the reader may hold frames past the audio's end)
                    self.stop.set()
                    writer_thread.join(JOIN_SECONDS)  # before the encoder is closed or killed
                if self.errors:
                    raise self.errors[0]
            duration = len(self.audio.samples) / TARGET_RATE
            with timer.stage("mux"):
                mux_audio(silent, job.audio_path, job.output_path, duration=duration)
        except BaseException:
            self.stop.set()
            raise
        finally:
            self.stop.set()
            deadline = time.perf_counter() + JOIN_SECONDS
            for thread in threads:
                if thread is not compile_thread:
                    thread.join(max(0.0, deadline - time.perf_counter()))
            if self.reader_pass is not None:
                self.reader_pass.close()
            store_bytes = self.store.bytes_written if self.store is not None else 0
            if self.store is not None:
                self.store.close()
            shutil.rmtree(self.work_dir, ignore_errors=True)
        compile_thread.join()
        if self.errors:
            raise self.errors[0]
        num_source = self.num_source if self.num_source is not None else n_out
        return InferenceResult(
            output_path=job.output_path, num_frames=n_out, num_source_frames=num_source, looped=num_source < n_out,
            frames_kept=self.kept, duration=duration,
            time_to_first_frame=None if self.first_frame_at is None else self.first_frame_at - begin,
            seconds=time.perf_counter() - begin, chunk_batches=self.batches, store_bytes=store_bytes,
            face_tracks=self.face_tracks())


def run_job(engine, job, *, checked=None, timer: StageTimer | None = None):
    """``LipsyncEngine.run``: the checks, then the streamed job (see the module docstring)."""
    checked = checked or check_inputs(job.video_path, job.audio_path, job.output_path)
    for path in parse_face_audio(job.face_audio).values():  # each face's own audio, before heavy work
        check_audio(path)
    return _Job(engine, job, checked, timer or StageTimer()).run()
