"""An engine whose device takes a set time per window: live sessions measured without a fast device.

A live session's latency is waiting for audio + look-ahead + compute + pacing (latency.py). On a
CPU the real program is far slower than real time, so the latency targets of a fast device
cannot be shown with it. ``StandInEngine(models, device_seconds=0.03)`` keeps everything of a
session real (the online audio windows' readiness and look-ahead, the ``ChunkSubmitter``
dispatch with overlap tails, stand-in faces, paste-back, pacing, the WebSocket server and page)
and replaces only the two device programs:

- the chunk program: a device that runs one call at a time, each taking ``device_seconds``
  (calls queue behind each other as on a real device; the result is ready ``device_seconds``
  after the device got to it); it returns the input faces unchanged (as float32 in [-1, 1]) and,
  with overlap, a tail of the right shape;
- the Whisper encoder (``encoder_seconds`` per call, zeros of the right shape): on a GPU the
  online encoder call is milliseconds, on this CPU seconds.

Used by tests/serving/test_live_server.py, tests/serving/test_live_real.py and bench/bench_stream.py ``--stand_in``
(numbers measured with it are labelled as such).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np


class _Device:
    """One call at a time: ``reserve()`` returns when the call's result will be ready."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self._free_at = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        with self._lock:
            self._free_at = max(time.perf_counter(), self._free_at) + self.seconds
            return self._free_at


class _Pending:
    """A result that is ready at a set time (``np.asarray`` waits for it, like a device array)."""

    def __init__(self, value: np.ndarray, ready_at: float):
        self.value, self.ready_at = value, ready_at

    def __array__(self, dtype=None, copy=None):
        wait = self.ready_at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return self.value if dtype is None else self.value.astype(dtype)

    def __getitem__(self, item):
        return np.asarray(self)[item]


class _StandInProgram:
    def __init__(self, device: _Device, overlap: int, tail_shape: tuple[int, ...]):
        self.device, self.overlap, self.tail_shape = device, overlap, tail_shape
        self.batch = 1
        self.calls = 0
        self.moments_calls = 0  # calls given cached VAE moments

    def compile(self, *params):
        return self

    def put_job(self, noise, vae_key_data):
        return noise, vae_key_data

    def __call__(self, unet_params, vae_params, faces, *rest, moments=None):
        self.calls += 1
        self.moments_calls += moments is not None
        faces = np.asarray(faces, np.float32) / 127.5 - 1.0
        result = _Pending(faces, self.device.reserve())
        if not self.overlap:
            return result
        return result, np.zeros(self.tail_shape, np.float32)


class _StandInEncoder:
    """Whisper's ``encode_windows`` taking ``seconds`` per call (zeros of the right shape)."""

    def __init__(self, extractor, seconds: float):
        self.config = extractor.config
        self.seconds = float(seconds)
        self.calls = 0

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds)
        c = self.config
        return np.zeros((windows.shape[0], c.n_frames // 2, c.n_audio_layer + 1, c.n_audio_state), np.float32)


class StandInEngine:
    """The parts of ``LipsyncEngine`` a live session uses, with timed stand-in programs (module doc)."""

    def __init__(self, models, device_seconds: float, encoder_seconds: float | None = None, restore_threads: int = 2):
        if encoder_seconds is not None:
            models = dataclasses.replace(models, audio=_StandInEncoder(models.audio, encoder_seconds))
        self.models = models
        self.device = _Device(device_seconds)
        self.batch = 1
        self.restore_threads = int(restore_threads)
        self._programs: dict = {}

    def program(self, sampling) -> _StandInProgram:
        key = sampling.overlap
        if key not in self._programs:
            m = self.models
            tail = (sampling.steps + 1, sampling.overlap, m.latent_size, m.latent_size, m.vae.config.latent_channels)
            self._programs[key] = _StandInProgram(self.device, sampling.overlap, tail)
        return self._programs[key]

    def weights_for(self, program):
        return None, None
