"""End-to-end lip sync of one video with one audio track (the side-effecting edge).

1. check both inputs and the output path (``inputs.check_inputs``), start the face backend;
2. load the audio (16 kHz mono), Whisper embeddings for the whole clip (small: 50 rows/s), and
   the per-frame window rows; the output has round(audio seconds x fps) frames;
3. face pass: decode the video at ``fps`` (ffmpeg's fps filter, as LatentSync re-encodes to
   25 fps), align every frame's face, keep the aligned faces (R x R uint8) and their affines;
   when the audio is longer than the video, also spill the frames to a temp file for the
   ping-pong loop; a video without any face stops here with ``NoFaceError``;
4. output pass, 16 output frames at a time: UNet input faces (frames without a face borrow the
   nearest face), VAE encode, jitted DDIM sampling, decode + paste back the unmasked pixels,
   restore into the full frames (frames without a face are written unchanged), H.264 encode;
5. mux the audio (AAC), cut to the audio's duration, into the output path.
Nothing appears at the output path unless every step succeeded; temp files are removed.
Memory: one full-resolution frame at a time plus the aligned faces of the video.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np
from tqdm import tqdm

from lipsync_jax.audio import frame_chunk_indices, gather_frame_windows, load_audio
from lipsync_jax.audio.load import TARGET_RATE
from lipsync_jax.face import FaceTracker
from lipsync_jax.media import VideoWriter, mux_audio, read_frames
from lipsync_jax.pipeline.chunk import ChunkGenerator
from lipsync_jax.pipeline.errors import InputError
from lipsync_jax.pipeline.faces import FaceTrack, track_faces
from lipsync_jax.pipeline.frames import ForwardFrames, FrameSpill
from lipsync_jax.pipeline.inputs import CheckedInputs, check_inputs
from lipsync_jax.pipeline.models import LipsyncModels
from lipsync_jax.pipeline.restore import paste_generated_face
from lipsync_jax.pipeline.timeline import chunk_bounds, output_frame_count, pad_to_chunk, pingpong_indices
from lipsync_jax.pipeline.timing import StageTimer


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    video_path: str
    audio_path: str
    output_path: str
    num_steps: int = 20
    guidance_scale: float = 1.5
    seed: int = 1247
    face_backend: str = "mediapipe"
    fps: float = 25.0
    max_seconds: float | None = None  # use only the first seconds of the audio (previews, tests)
    crf: int = 18
    preset: str = "medium"
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    output_path: str
    num_frames: int  # frames written
    num_source_frames: int  # video frames read (at ``fps``)
    looped: bool  # the video was looped ping-pong to cover the audio
    frames_kept: int  # output frames written unchanged (no face found there)
    duration: float  # seconds of audio in the output


@dataclasses.dataclass
class AudioPlan:
    samples: np.ndarray  # (n,) float32, 16 kHz
    embeddings: np.ndarray  # (T, layers, d) Whisper rows, 50 per second
    window_rows: np.ndarray  # (N, 10) rows of each video frame's window
    num_frames: int  # output frames

    def windows(self, frame_indices: np.ndarray) -> np.ndarray:
        """(k, 10 * layers, d) audio windows of these output frames."""
        return gather_frame_windows(self.embeddings, self.window_rows[frame_indices])


def prepare_audio(models: LipsyncModels, path: str, fps: float, max_seconds: float | None) -> AudioPlan:
    samples = load_audio(path)
    if max_seconds is not None:
        samples = samples[:int(round(max_seconds * TARGET_RATE))]
    if len(samples) < TARGET_RATE / fps:
        raise InputError(f"audio {path}: shorter than one video frame ({len(samples) / TARGET_RATE:.3f} s)")
    embeddings = models.audio.clip_embeddings(samples)
    window_rows = frame_chunk_indices(len(embeddings), fps, models.audio_feat_length)
    num_frames = output_frame_count(len(samples), TARGET_RATE, fps, len(window_rows))
    return AudioPlan(samples, embeddings, window_rows, num_frames)


def _spill_frames(path: str, fps: float, count: int, spill: FrameSpill) -> None:
    for frame in read_frames(path, fps, max_frames=count):
        spill.append(frame)


def write_synced_video(models: LipsyncModels, generator: ChunkGenerator, track: FaceTrack, audio: AudioPlan,
                       frames, mapping: np.ndarray, writer: VideoWriter, *, timer: StageTimer,
                       progress: bool = True) -> int:
    """Generate, restore and encode every output frame; returns how many were kept unchanged."""
    f = models.num_frames
    has_face, stand_ins = track.has_face, track.stand_ins()
    bounds = chunk_bounds(len(mapping), f)
    kept = 0
    with tqdm(total=len(bounds), desc="Sampling", unit="chunk", disable=not progress, position=0) as sample_bar, \
            tqdm(total=len(mapping), desc="Writing", unit="frame", disable=not progress, position=1) as write_bar:
        for chunk_index, (start, stop) in enumerate(bounds):
            sources = mapping[start:stop]
            faces = None
            if has_face[sources].any():
                padded = pad_to_chunk(sources, f)
                windows = audio.windows(pad_to_chunk(np.arange(start, stop), f))
                faces = generator(track.chunk_faces(padded, stand_ins), windows, chunk_index, timer=timer,
                                  real_frames=stop - start)
            sample_bar.update()
            for j, source in enumerate(sources):
                with timer.stage("frame_read", 1):
                    frame = frames.get(int(source))
                if faces is not None and has_face[source]:
                    with timer.stage("restore", 1):
                        frame = paste_generated_face(frame, faces[j], track.aligned[int(source)])
                else:
                    kept += 1
                with timer.stage("video_encode", 1):
                    writer.write(frame)
                write_bar.update()
    return kept


def run_inference(models: LipsyncModels, options: InferenceOptions, *, checked: CheckedInputs | None = None,
                  timer: StageTimer | None = None) -> InferenceResult:
    """Lip-sync ``options.video_path`` to ``options.audio_path`` into ``options.output_path``."""
    timer = timer or StageTimer()
    checked = checked or check_inputs(options.video_path, options.audio_path, options.output_path)
    video, fps = checked.video, float(options.fps)
    with timer.stage("setup"):
        tracker = FaceTracker(models.resolution, backend=options.face_backend, source=options.video_path)
    work_dir = tempfile.mkdtemp(prefix=".lipsync_", dir=os.path.dirname(os.path.abspath(options.output_path)))
    spill = frames = None
    try:
        with timer.stage("audio"):
            audio = prepare_audio(models, options.audio_path, fps, options.max_seconds)
        n_out = audio.num_frames
        timer.count("audio", n_out)
        if video.frame_count_at(fps) < n_out:
            spill = FrameSpill(video.width, video.height, folder=work_dir)
        with timer.stage("face_alignment"):
            track = track_faces(read_frames(video.path, fps, max_frames=n_out, info=video), tracker, spill=spill,
                                total=min(n_out, video.frame_count_at(fps)), progress=options.progress)
        timer.count("face_alignment", track.num_frames)
        mapping = pingpong_indices(track.num_frames, n_out)
        if track.num_frames < n_out and spill is None:  # the frame-count estimate was too high
            spill = FrameSpill(video.width, video.height, folder=work_dir)
            _spill_frames(video.path, fps, track.num_frames, spill)
        frames = spill if spill is not None else ForwardFrames(video.path, fps, n_out)
        with timer.stage("setup"):
            generator = ChunkGenerator(models, num_steps=options.num_steps, guidance_scale=options.guidance_scale,
                                       seed=options.seed)
        silent = os.path.join(work_dir, "video.mp4")
        with VideoWriter(silent, video.width, video.height, fps, crf=options.crf, preset=options.preset) as writer:
            kept = write_synced_video(models, generator, track, audio, frames, mapping, writer, timer=timer,
                                      progress=options.progress)
        duration = len(audio.samples) / TARGET_RATE
        with timer.stage("video_encode"):
            mux_audio(silent, options.audio_path, options.output_path, duration=duration)
    finally:
        tracker.close()
        if frames is not None and frames is not spill:
            frames.close()
        if spill is not None:
            spill.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    return InferenceResult(output_path=options.output_path, num_frames=n_out, num_source_frames=track.num_frames,
                           looped=track.num_frames < n_out, frames_kept=kept, duration=duration)
