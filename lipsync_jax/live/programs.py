"""A live session's device program before any audio arrives, and the stride a latency budget allows.

- ``warm_up(engine, options, moments=..., repeats=N)``: compile and run the session's program once
  on blank inputs (and the Whisper encoder's one-window shape), so the first window pays for
  neither; with ``repeats`` it then times that many calls and returns the median device seconds
  per window (the program is the same for every window of a stride: one 16-frame window per call).
- ``choose_stride(max_latency, device_seconds, fps=...)``: the largest stride S whose wait
  (S / fps of audio + the look-ahead) plus the device time per window fits ``max_latency``, and
  whose device time keeps up with real time (at most S / fps per window). ``device_seconds(S)``
  measures the program of stride S (compiling it); a stride is chosen only with its own
  measurement. Returns a ``StrideChoice`` whose ``describe()`` says what was chosen and why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from lipsync_jax.live.audio_online import look_ahead_seconds
from lipsync_jax.pipeline.job import NUM_FRAMES, OptionError, parse_float
from lipsync_jax.pipeline.program import start_noise


def warm_audio_encoder(models) -> None:
    """Compile the Whisper encoder's one-window shape now (the first window should not pay it)."""
    config = models.audio.config
    models.audio.encode_windows(np.zeros((1, config.n_frames, config.n_mels), np.float32))


def warm_up(engine, options, *, moments: bool = False, repeats: int = 0) -> float | None:
    """Compile and run the device program of ``options`` (a ``StreamOptions``: its stride picks the
    overlap program) once on blank inputs, and the audio encoder, so that a session's first window
    pays for neither. ``moments``: run it on cached VAE moments (an avatar that has them: the same
    compiled program, the encoder skipped). ``repeats`` > 0: the median seconds of that many
    further calls (device time per window), else None."""
    models = engine.models
    warm_audio_encoder(models)
    program = engine.program(options.program_sampling)
    params = engine.weights_for(program)
    noise, key_data = program.put_job(*start_noise(models, options.seed))
    f, r, b = models.num_frames, models.resolution, program.batch  # overlap programs: one device
    layers = models.audio.config.n_audio_layer + 1
    rows = sum(models.audio_feat_length) * 2 + 2
    faces = np.zeros((b, f, r, r, 3), np.uint8)
    audio = np.zeros((b, f, rows * layers, models.audio.config.n_audio_state), np.float32)
    cached = np.zeros((b, f, models.latent_size, models.latent_size, 16), np.float32) if moments else None

    def call() -> float:
        begin = time.perf_counter()
        out = program(*params, faces, audio, np.zeros((b,), np.int32), noise, key_data, moments=cached)
        np.asarray(out[0] if isinstance(out, tuple) else out)
        return time.perf_counter() - begin

    call()
    times = [call() for _ in range(int(repeats))]
    return float(np.median(times)) if times else None


@dataclasses.dataclass(frozen=True)
class StrideChoice:
    stride: int
    max_latency: float
    wait: float  # stride / fps: the audio of the window's new frames
    look_ahead: float
    device_seconds: float  # measured device time per window
    measured: dict  # stride -> device seconds, every stride measured on the way

    @property
    def latency(self) -> float:
        return self.wait + self.look_ahead + self.device_seconds

    def describe(self) -> str:
        return (f"max_latency {self.max_latency:g} s: stride {self.stride} (audio {self.wait:.3f} s + look-ahead "
                f"{self.look_ahead:.4f} s + device {self.device_seconds:.3f} s per window = {self.latency:.3f} s; "
                f"real time needs <= {self.wait:.3f} s of device time per window)")


def choose_stride(max_latency, device_seconds: Callable[[int], float], *, fps: float = 25.0,
                  num_frames: int = NUM_FRAMES, look_ahead: float | None = None,
                  strides: tuple[int, ...] | None = None) -> StrideChoice:
    """See the module docstring; ``strides``: the candidates (default 1..num_frames); ``OptionError``
    (one line) when none fits."""
    budget = parse_float("max_latency", max_latency, low=0.0)
    look = look_ahead_seconds(fps) if look_ahead is None else float(look_ahead)
    wait = lambda s: s / fps  # noqa: E731
    candidates = sorted(set(strides or range(1, num_frames + 1)), reverse=True)

    def fits(s: int, device: float) -> bool:
        return wait(s) + look + device <= budget and device <= wait(s)

    start = max((s for s in candidates if wait(s) + look < budget), default=None)
    if start is None:
        smallest = candidates[-1]
        raise OptionError(f"max_latency {budget:g} s: shorter than the audio any window waits for (stride "
                          f"{smallest}: {wait(smallest):.3f} s + look-ahead {look:.4f} s)")
    measured = {start: float(device_seconds(start))}
    while True:
        estimate = min(measured.values())  # for strides not measured yet (the same program size)
        pick = max((s for s in candidates if fits(s, measured.get(s, estimate))), default=None)
        if pick is None:
            device = min(measured.values())
            need = int(np.ceil(device * fps))
            if need > candidates[0]:
                raise OptionError(f"max_latency {budget:g} s: no stride fits: the device takes {device:.3f} s per "
                                  f"window, slower than real time even at stride {candidates[0]} "
                                  f"({wait(candidates[0]):.3f} s of audio per window)")
            raise OptionError(f"max_latency {budget:g} s: no stride fits: the device takes {device:.3f} s per window, "
                              f"which needs stride >= {need} for real time, i.e. a latency of at least "
                              f"{wait(need) + look + device:.3f} s")
        if pick in measured:
            return StrideChoice(pick, budget, wait(pick), look, measured[pick], dict(measured))
        measured[pick] = float(device_seconds(pick))
