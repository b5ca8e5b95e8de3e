"""The ONE chunk dispatcher: build a chunk's UNet inputs, submit batches of chunks to the device
program, paste the generated faces back. The offline engine (job_runner.py), live sessions
(lipsync_jax/live/session.py) and avatar-cache jobs (cached VAE moments) all go through it.

- ``chunk_inputs(sources, stand_in_face, windows, f)``: a chunk's (f, R, R, 3) uint8 faces and
  (f, T, D) audio windows from its source frames (a frame without a face borrows its stand-in's
  face; the last chunk is padded to ``f`` frames by repeating its last frame).
- ``ChunkSubmitter(engine, sampling, seed, moments=None)``: one job's submissions. ``submit(chunks)``
  stacks up to ``engine.batch`` chunks (padding the batch with the last chunk), runs the moments
  program when every face of the batch has cached VAE moments (moments.py) and the encoding
  program otherwise, and for overlapping windows links the first window of a call to the last
  window of the previous call when it follows it (the tail trajectory stays on the device,
  whichever of the two programs made it).
  Returns the device array of generated faces (B, f, R, R, 3) float32 without waiting for it.
- ``paste_faces(frame, pastes)``: each (aligned face, generated face) pasted into the frame in lane
  order.

Keys: chunk c's VAE samples come from ``fold_in(split(key(seed))[1], c)`` and its start noise from
``split(key(seed))[0]``, so a chunk's result does not depend on how chunks are batched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from lipsync_jax.pipeline.moments import FaceMoments
from lipsync_jax.pipeline.program import start_noise
from lipsync_jax.pipeline.restore import paste_generated_face
from lipsync_jax.pipeline.store import SourceRecord
from lipsync_jax.pipeline.timeline import pad_to_chunk


@dataclasses.dataclass
class ChunkWork:
    index: int  # chunk (window) number in the output: its VAE keys are fold_in(key, index)
    start: int  # first output frame it writes
    records: list[SourceRecord]  # the chunk's real frames it writes, in output order
    faces: np.ndarray | None = None  # (f, R, R, 3) uint8 UNet input faces; None: no face, no generation
    audio: np.ndarray | None = None  # (f, T, D) audio windows
    generated: np.ndarray | None = None  # (f - offset, R, R, 3) float32 after the device program
    lane: int = 0  # which chosen face (several faces: one ChunkWork per chunk and lane)
    offset: int = 0  # overlapping windows: the first written frame's place in the window (0 or K)


def chunk_inputs(sources: np.ndarray, stand_in_face: Callable[[int], np.ndarray],
                 windows: Callable[[np.ndarray], np.ndarray], frames: np.ndarray,
                 f: int) -> tuple[np.ndarray, np.ndarray]:
    """(faces (f, R, R, 3) uint8, audio (f, T, D)) of a chunk: ``sources`` are its source frames,
    ``frames`` its output frames (both padded to ``f`` by repeating the last); ``stand_in_face(s)``
    is the face source frame ``s`` uses (its own, or its stand-in's); ``windows(frames)`` the audio
    windows of output frames."""
    faces = np.stack([stand_in_face(int(s)) for s in pad_to_chunk(np.asarray(sources), f)])
    return faces, windows(pad_to_chunk(np.asarray(frames), f))


class ChunkSubmitter:
    """One job's submissions to ``engine``'s program for ``sampling`` (see the module docstring)."""

    def __init__(self, engine, sampling, seed: int, *, moments: FaceMoments | None = None):
        self.engine = engine
        self.overlap = int(sampling.overlap)
        self.program = engine.program(sampling)
        self.params = engine.weights_for(self.program)
        self.moments = moments or None  # cached VAE moments replace the encoder where they cover a batch
        self.moments_program = engine.moments_program(sampling) if self.moments is not None else None
        self.batch = self.program.batch
        self.noise, self.key_data = self.program.put_job(*start_noise(engine.models, seed))
        self.tail, self.tail_window = None, None  # overlap: the last full call's tail (device) and window
        self.calls = {"moments": 0, "encode": 0}

    def compile(self) -> None:
        """Compile (or load from the persistent cache) what this job will run."""
        (self.moments_program or self.program).compile(*self.params)

    def submit(self, chunks: list[ChunkWork]):
        """Launch the program on up to ``batch`` chunks (consecutive windows with overlap); returns
        the generated faces (B, f, R, R, 3) as a device array, the padding chunks' included."""
        if not 0 < len(chunks) <= self.batch:
            raise ValueError(f"a program call takes 1..{self.batch} chunks, got {len(chunks)}")
        padded = chunks + [chunks[-1]] * (self.batch - len(chunks))
        faces, audio = np.stack([c.faces for c in padded]), np.stack([c.audio for c in padded])
        indices = np.array([c.index for c in padded], np.int32)
        moments = self.moments.lookup(faces) if self.moments is not None else None
        self.calls["encode" if moments is None else "moments"] += 1
        inputs = (faces, audio, indices) if moments is None else (faces, moments, audio, indices)
        program = self.program if moments is None else self.moments_program
        if not self.overlap:
            return program(*self.params, *inputs, self.noise, self.key_data)
        linked = self.tail is not None and self.tail_window == chunks[0].index - 1
        output, tail = program(*self.params, *inputs, self.noise, self.key_data, self.tail if linked else None, linked)
        full = len(chunks) == self.batch  # padding windows would hand on the wrong tail
        self.tail, self.tail_window = (tail, chunks[-1].index) if full else (None, None)
        return output


def paste_faces(frame: np.ndarray, pastes) -> np.ndarray:
    """Paste each (aligned face, generated face) into ``frame`` (H, W, 3) uint8, in lane order."""
    for aligned, face in pastes:
        frame = paste_generated_face(frame, face, aligned)
    return frame
