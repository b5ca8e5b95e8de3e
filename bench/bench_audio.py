"""Benchmark: Whisper-tiny features for 60 s of audio on this machine.

    python bench/bench_audio.py [--seconds 60] [--repeats 3] [--dtype float32]

Uses the golden fixture's tiny-size encoder weights (real Whisper-tiny dims, random values; the
timing does not depend on the values). 60 s = two 30 s windows, encoded in ONE jitted call (one
window batch). Reports compile time, then the steady-state time of each stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.audio.features import AudioFeatureExtractor, frame_chunk_indices, gather_frame_windows
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram, mel_windows
from lipsync_jax.convert.whisper import convert_state_dict
from lipsync_jax.golden.core import load_fixture

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "golden", "whisper_audio.npz")


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    fixture = load_fixture(FIXTURE)
    params, report = convert_state_dict(fixture.weights_f32(), fixture.config)
    report.raise_if_problems("fixture weights")
    extractor = AudioFeatureExtractor(params, fixture.config, dtype=jnp.dtype(args.dtype))
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32)

    mel, t_mel = _time(lambda: log_mel_spectrogram(audio), args.repeats)
    windows, valid = mel_windows(mel)
    start = time.perf_counter()
    extractor.encode_windows(windows)
    t_compile = time.perf_counter() - start
    encoded, t_encode = _time(lambda: extractor.encode_windows(windows), args.repeats)
    frames, t_total = _time(lambda: extractor.frame_windows(audio), args.repeats)
    embeddings = extractor.clip_embeddings(audio)
    indices = frame_chunk_indices(len(embeddings))
    _, t_gather = _time(lambda: gather_frame_windows(embeddings, indices), args.repeats)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}")
    print(f"audio: {args.seconds:g} s -> log-mel {mel.shape}, windows {windows.shape} (valid {valid.tolist()}), "
          f"one jitted call per batch of {extractor.max_batch}")
    print(f"encoder output {encoded.shape} {encoded.dtype}; clip embeddings {embeddings.shape}; "
          f"frame windows {frames.shape} {frames.dtype}; compute dtype {args.dtype}")
    print(f"log-mel (numpy):            {t_mel * 1e3:8.1f} ms")
    print(f"encoder compile + first run:{t_compile * 1e3:8.1f} ms")
    print(f"encoder ({windows.shape[0]} windows, 1 call): {t_encode * 1e3:8.1f} ms")
    print(f"frame windows gather:       {t_gather * 1e3:8.1f} ms")
    print(f"total audio -> (N, 50, 384): {t_total * 1e3:8.1f} ms (best of {args.repeats})")


if __name__ == "__main__":
    main()
