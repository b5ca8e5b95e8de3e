"""One offline job through the engine as a stream: three threads joined by bounded queues.

    reader      decode the video once (ffmpeg pipe) + the face pass, frame by frame; for a
                ping-pong loop also into the compressed ``FrameStore``
    dispatcher  cut the output into 16-frame chunks (LatentSync's timeline), choose stand-in
                faces, and hand ``engine.batch`` chunks that have a face to the job's
                ``ChunkSubmitter`` (dispatch.py; asynchronous: it returns at once)
    writer      wait for a batch's faces, restore them into the frames (thread pool), H.264 encode

so decode/alignment of batch i+1 and restore/encode of batch i-1 run while the device computes
batch i. Memory is bounded by the queue sizes (a few chunk batches of frames), whatever the
length of the video or the audio. Stand-ins: a frame without a face borrows the nearest frame
with one; in a chunk that has a face the nearest is always within ``f - 1`` frames, so the
dispatcher keeps only a window of ``f - 1`` frames behind and ahead (the result equals the
whole-video rule of ``nearest_face_indices``).

Several faces (``SyncJob.face="all"`` / ``face_audio``, pipeline/face_choice.py): the face pass gives
a tuple per frame (one face or None per chosen person, a *lane*); the dispatcher makes one
``ChunkWork`` per chunk and lane (each lane its own stand-ins and audio), stacks them all on the
batch axis of the same program calls, and the writer pastes a chunk's lanes into each frame in
lane order (a lane whose person is absent from a frame leaves that frame alone).

Overlapping windows (``Sampling.overlap`` K > 0, one face, one device): the output is cut into
16-frame windows with stride 16 - K (``diffusion.window_starts``); each window's faces and audio
cover all its 16 frames, but only its new frames (all of the first window, frames K.. of the
others) are written. The windows of a call are consecutive; the tail trajectory the program
returns stays on the device and links the next call's first window when it follows (a window
without any face, or a partial batch, breaks the chain: the next window starts unlinked).

Start of a job: the audio's length gives the output frame count (``audio_plan.predicted_frames``),
so the Whisper features are computed in a thread while the calling thread runs the face pre-pass;
the face backends come warm from the engine's ``LandmarkerPool`` (``engine.landmarkers``). A job
for one person (and no frame store) starts the reader at once with the plain single-face tracker,
*speculatively*: its records wait in the reader (at most one queue's worth) until the pre-pass
has decided; when the video has at most one face track (the plan is that very tracker) they go
on, else they are dropped and the reader starts over with the plan's face pass.

The face pass can be replaced for a job (``face_pass``: a factory, e.g. an avatar cache's replay)
or observed (``record_face_pass``: wraps the pass the job builds, e.g. to store it in the avatar
cache); cached VAE moments (``moments``) replace the encoder where they cover a chunk batch.

Stopping: the calling thread waits on the workers; an exception there (Ctrl-C, SIGTERM turned
into an exception by the CLI) or in a worker sets the stop event, every worker leaves its loop
(ffmpeg processes are killed), and the work folder beside the output is deleted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from lipsync_jax.audio.load import TARGET_RATE
from lipsync_jax.media import VideoWriter, mux_audio, read_frames
from lipsync_jax.pipeline.audio_plan import audio_plan, lane_audio_plans, load_job_audio, predicted_frames
from lipsync_jax.pipeline.dispatch import ChunkSubmitter, ChunkWork, chunk_inputs, paste_faces
from lipsync_jax.pipeline.face_choice import FacePlan, face_choices, lane_faces, plan_faces
from lipsync_jax.pipeline.faces import nearest_face_indices
from lipsync_jax.pipeline.inputs import check_audio, check_inputs
from lipsync_jax.pipeline.job import InferenceResult, Sampling, SyncJob
from lipsync_jax.pipeline.moments import FaceMoments
from lipsync_jax.pipeline.store import FrameStore, SourceRecord
from lipsync_jax.pipeline.timeline import chunk_bounds, pingpong_indices, window_bounds, window_frames
from lipsync_jax.pipeline.timing import StageTimer
from lipsync_jax.pipeline.work_dirs import make_work_dir, remove_work_dir

_END = object()
POLL_SECONDS = 0.1
JOIN_SECONDS = 30.0  # how long a stopped job waits for its workers before cleaning up anyway


class _Stopped(Exception):
    """Raised inside a worker when the job is stopping."""


@dataclasses.dataclass
class ChunkGroup:
    chunks: list[ChunkWork]  # consecutive chunks (a chunk's lanes together), in output order
    output: object = None  # device array(s) of the generated faces of the chunks with faces


@dataclasses.dataclass(frozen=True)
class JobHooks:
    """Per-job replacements and observers (all optional; see the module docstring).

    ``face_pass(resolution, backend, source)``: a face pass for this job instead of the engine's
    own choice (it gives one face per frame and ignores ``SyncJob.face``); ``record_face_pass(pass)``
    wraps each face pass the job builds; ``moments``: cached VAE moments of the video's faces;
    ``on_chunk(chunk_index, first_output_frame, faces)`` sees each generated chunk's faces ((k, R, R,
    3) float32 in [-1, 1], k real frames) before restore (several faces: once per face, in lane
    order); ``on_progress(stage, done, total)`` after each frame of a stage ("finding faces",
    "lip sync"; from worker threads); ``lead_in``: overlapping windows end at multiples of the
    stride, the first one padded before frame 0 with frame 0 (the live sessions' layout, so that
    their output can be compared)."""

    face_pass: Callable | None = None
    record_face_pass: Callable | None = None
    moments: FaceMoments | None = None
    on_chunk: Callable[[int, int, np.ndarray], None] | None = None
    on_progress: Callable[[str, int, int | None], None] | None = None
    lead_in: bool = False  # overlapping windows in the live sessions' layout (timeline.window_bounds)


class _Job:
    def __init__(self, engine, job: SyncJob, sampling: Sampling, checked, timer: StageTimer, hooks: JobHooks,
                 progress: bool):
        self.engine, self.job, self.sampling, self.timer, self.hooks = engine, job, sampling, timer, hooks
        self.progress = progress
        self.models = engine.models
        self.fps = float(self.models.fps)
        self.backend = engine.run_options.face_backend
        self.f = self.models.num_frames
        self.checked = checked
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        depth = max(1, engine.run_options.queue_batches)
        # the reader runs one chunk batch (+ the stand-in lookahead) ahead of the dispatcher
        self.sources: queue.Queue = queue.Queue(maxsize=engine.batch * self.f + self.f)
        self.groups: queue.Queue = queue.Queue(maxsize=depth)
        self.first_frame_at: float | None = None
        self.kept = 0
        self.batches = 0
        self.num_source: int | None = None
        self.store: FrameStore | None = None
        self.face_plan = None  # pipeline/face_choice.FacePlan (None: the hooks' face pass)
        self.lanes = 1
        self.overlap = sampling.overlap  # frames shared by consecutive windows
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
        video, fps = self.checked.video, self.fps
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
            for index, frame in enumerate(read_frames(self.checked.video.path, self.fps, max_frames=count,
                                                      info=self.checked.video)):
                if self.stop.is_set():
                    raise _Stopped
                self.store.put(SourceRecord(index, frame, face_pass(frame)))
        finally:
            face_pass.close()

    def new_face_pass(self):
        """The hooks' face pass (when given), or the job's own (pre-pass and face choice on the first
        call), wrapped by ``record_face_pass`` when it is given."""
        job, hooks = self.job, self.hooks
        if hooks.face_pass is not None:
            face_pass = hooks.face_pass(self.models.resolution, self.backend, job.video)
            if job.several_faces:
                face_pass.close()
                raise ValueError("several faces (face 'all' / face_audio) need the engine's own face pass "
                                 "(this job's face pass gives one face per frame)")
        else:
            if self.face_plan is None:
                self.face_plan = self.plan_faces()
            face_pass = self.face_plan.new_face_pass()
        return face_pass if hooks.record_face_pass is None else hooks.record_face_pass(face_pass)

    def plan_faces(self) -> FacePlan:
        report = self.hooks.on_progress
        on_frame = None if report is None else (lambda done, total: report("finding faces", done, total))
        return plan_faces(self.models.resolution, self.job, backend=self.backend, fps=self.fps,
                          max_frames=self.n_out, progress=self.progress, landmarkers=self.engine.landmarkers,
                          on_frame=on_frame)

    def face_tracks(self) -> tuple[int, ...]:
        plan = self.face_plan
        return () if plan is None or plan.track_ids is None else tuple(plan.track_ids)

    # ------------------------------------------------------------------ dispatcher
    def dispatch(self, submitter: ChunkSubmitter) -> None:
        f, n_out, batch = self.f, self.n_out, submitter.batch
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
        bounds = (window_bounds(n_out, f, overlap, lead_in=self.hooks.lead_in) if overlap else
                  [(a, a, b) for a, b in chunk_bounds(n_out, f)])
        for index, (first, start, stop) in enumerate(bounds):  # window frames first..stop, written start..stop
            pull_until(stop - 1 + f - 1)
            if mapping is None and eof and self.num_source < n_out:
                if self.store is None:
                    self.refill_store(self.num_source)
                self.store.flush()
                mapping = pingpong_indices(self.num_source, n_out)
            frames = window_frames(first, stop)
            sources = frames if mapping is None else mapping[frames]
            with self.timer.stage("batch_assembly", stop - start):
                window_records = [record_of(int(s)) for s in sources]
                records = window_records[start - first:]  # the frames this window writes
                lane_has_face = [any(lane_faces(r.aligned)[lane] is not None for r in records)
                                 for lane in range(self.lanes)]
                if overlap and lane_has_face[0] and not previous_had_face and with_faces:
                    self.launch(submitter, pending)  # the chain of windows breaks here
                    pending, with_faces = [], 0
                previous_had_face = lane_has_face[0]
                for lane in range(self.lanes):
                    work = ChunkWork(index, start, records, lane=lane, offset=start - first)
                    if lane_has_face[lane]:
                        known = read if not eof else self.num_source
                        lo, hi = max(0, int(sources.min()) - (f - 1)), min(known, int(sources.max()) + f)
                        near = lo + nearest_face_indices(np.array([has_face(s, lane) for s in range(lo, hi)]))
                        def stand_in(s, lane=lane, near=near, lo=lo):  # the face source frame s uses
                            return lane_faces(record_of(int(near[s - lo])).aligned)[lane].face
                        work.faces, work.audio = chunk_inputs(sources, stand_in, self.lane_audio[lane].windows,
                                                              frames, f)
                        with_faces += 1
                    pending.append(work)
            for old in [k for k in window if k < stop - overlap - (f - 1)]:  # the next window's stand-ins
                del window[old]
            flush = len(pending) >= (2 * batch + 2) * self.lanes and not (overlap and previous_had_face)
            if with_faces >= batch or flush:
                self.launch(submitter, pending)
                pending, with_faces = [], 0
        if pending:
            self.launch(submitter, pending)
        if not eof:  # the audio ended first: the reader may still be waiting to hand over frames
            self.num_source = None
        self.put(self.groups, _END)

    def launch(self, submitter: ChunkSubmitter, chunks: list[ChunkWork]) -> None:
        work = [c for c in chunks if c.faces is not None]
        group = ChunkGroup(chunks)
        batch, outputs = submitter.batch, []
        for first in range(0, len(work), batch):  # several faces: a chunk's lanes may overflow one call
            part = work[first:first + batch]
            with self.timer.stage("dispatch", sum(len(c.records) for c in part)):
                outputs.append(submitter.submit(part))
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
                        if self.hooks.on_chunk is not None:
                            self.hooks.on_chunk(chunk.index, chunk.start, chunk.generated[:len(chunk.records)])
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
                            bar.reset()  # the rate and ETA count from the first frame, not from the compile
                        bar.update()
                        if self.hooks.on_progress is not None:
                            self.hooks.on_progress("lip sync", bar.n, self.n_out)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def restore(self, frame: np.ndarray, pastes) -> np.ndarray:
        with self.timer.stage("restore", 1):
            return paste_faces(frame, pastes)

    # ------------------------------------------------------------------ the whole job
    def run(self) -> InferenceResult:
        job, timer, models, fps = self.job, self.timer, self.models, self.fps
        begin = time.perf_counter()
        submitter = ChunkSubmitter(self.engine, self.sampling, job.seed, moments=self.hooks.moments)
        compile_thread = self.worker("compile", submitter.compile)
        self.work_dir = make_work_dir(job.output)
        threads = [compile_thread]
        try:
            with timer.stage("audio"):
                samples = load_job_audio(job.audio, fps, job.max_seconds)

            def whisper():
                with timer.stage("audio"):
                    self.audio = audio_plan(models, samples, fps, self.sampling.audio_windows)

            predicted = predicted_frames(models, samples, fps)
            audio_thread = None
            if predicted is None:
                whisper()
            else:  # the Whisper features while the face pre-pass runs here
                audio_thread = self.worker("audio", whisper)
                threads.append(audio_thread)
            self.n_out = n_out = self.audio.num_frames if predicted is None else predicted
            if self.checked.video.frame_count_at(fps) < n_out + int(fps):
                self.store = FrameStore(self.work_dir)  # probably a ping-pong loop: keep every frame
            choices = face_choices(job.face, job.face_audio)
            speculate = (predicted is not None and self.hooks.face_pass is None and self.hooks.record_face_pass is None
                         and self.store is None and choices is not None and len(choices) == 1)
            if speculate:  # the plain tracker's pass starts now; the pre-pass decides whether it stays
                self.reader_pass = FacePlan(models.resolution, self.backend, job.video, None,
                                            landmarkers=self.engine.landmarkers).new_face_pass()
                threads.append(self.worker("reader", lambda: self.read(n_out, speculative=True)))
            with timer.stage("setup"):  # the face pre-pass runs while the program compiles
                if speculate:
                    self.face_plan = self.plan_faces()
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
                    self.lane_audio = lane_audio_plans(models, self.face_plan.lane_audio, self.audio, fps,
                                                       self.sampling.audio_windows)
            silent = os.path.join(self.work_dir, "video.mp4")
            video = self.checked.video
            with tqdm(total=n_out, desc="Lip sync", unit="frame", disable=not self.progress) as bar, \
                    VideoWriter(silent, video.width, video.height, fps, crf=job.crf, preset=job.preset) as writer:
                if not speculate:
                    threads.append(self.worker("reader", lambda: self.read(n_out)))
                threads.append(self.worker("dispatcher", lambda: self.dispatch(submitter)))
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
                mux_audio(silent, job.audio, job.output, duration=duration)
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
            remove_work_dir(self.work_dir)
        compile_thread.join()
        if self.errors:
            raise self.errors[0]
        num_source = self.num_source if self.num_source is not None else n_out
        return InferenceResult(
            output_path=job.output, num_frames=n_out, num_source_frames=num_source, looped=num_source < n_out,
            frames_kept=self.kept, duration=duration,
            time_to_first_frame=None if self.first_frame_at is None else self.first_frame_at - begin,
            seconds=time.perf_counter() - begin, chunk_batches=self.batches, store_bytes=store_bytes,
            face_tracks=self.face_tracks(), program_calls=dict(submitter.calls))


def run_job(engine, job: SyncJob, sampling: Sampling, *, checked=None, timer: StageTimer | None = None,
            hooks: JobHooks = JobHooks(), progress: bool = False) -> InferenceResult:
    """``LipsyncEngine.run``: the checks, then the streamed job (see the module docstring)."""
    checked = checked or check_inputs(job.video, job.audio, job.output)
    for path in job.face_audio.values():  # each face's own audio, before heavy work
        check_audio(path)
    return _Job(engine, job, sampling, checked, timer or StageTimer(), hooks, progress).run()
