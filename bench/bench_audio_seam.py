"""Seam of the Whisper windows: LatentSync's disjoint 30 s windows vs sliding windows.

    python bench/bench_audio_seam.py [--seconds 70] [--weights flax|fixture] [--seed 2] [--live]
    python bench/bench_audio_seam.py --whisper_checkpoint checkpoints/jax/whisper   # trained weights

The audio is real speech: the two demo clips of tests/data/assets concatenated (demo1 from 3 s
on, then demo2, demo1, ... cut to ``--seconds``, so no join lies within 0.5 s of a window switch).
The encoder is Whisper-tiny's real shape (configs/whisper/tiny.py: 4 layers, 6 heads, width 384,
1500 positions) with random weights: ``flax`` = the ``init`` that ``build_models(...,
random_init=True)`` uses (seed 2 there), ``fixture`` = the PyTorch-initialised weights of the
golden fixture whisper_audio. No trained weights are needed for the metric:

    seam ratio = ||f[i+1] - f[i]|| / median_j ||f[j+1] - f[j]||

over the frames i whose 10 embedding rows come from other windows than frame i + 1's (f = the
(50, 384) window the UNet gets per frame at 25 fps). 1 = an ordinary step between two frames.
Reported per video frame (the UNet's (50, 384) input) and per Whisper row (20 ms; the rows'
neighbours), with the 99th percentile of ALL neighbour steps for scale; ``--live`` adds the
windows a live session computes (40 ms pieces). Prints JSON and Markdown rows for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ASSETS = os.path.join(ROOT, "tests", "data", "assets")
FIXTURE = os.path.join(ROOT, "tests", "data", "golden", "whisper_audio.npz")


def speech(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """``seconds`` of the demo speech: demo1 from 3 s, demo2, demo1, demo2, ... (16 kHz mono)."""
    from lipsync_jax.audio import load_audio

    clips = [load_audio(os.path.join(ASSETS, f"demo{k}_audio.wav")) for k in (1, 2)]
    parts, total, k = [clips[0][3 * sample_rate:]], 0, 1
    total = len(parts[0])
    while total < seconds * sample_rate:
        parts.append(clips[k % 2])
        total += len(parts[-1])
        k += 1
    return np.concatenate(parts)[:int(seconds * sample_rate)]


def extractor_for(weights: str, seed: int, checkpoint: str = ""):
    import jax

    from lipsync_jax.audio import AudioFeatureExtractor, WhisperEncoderConfig
    from lipsync_jax.audio.whisper_encoder import init_params
    from lipsync_jax.config_utils import config_to_dict, load_config

    if checkpoint:  # trained weights: a converted folder or the original whisper/tiny.pt
        from lipsync_jax.checkpoints import is_converted, restore_params
        from lipsync_jax.convert.whisper import convert_file

        params, stored = restore_params(checkpoint) if is_converted(checkpoint) else (convert_file(checkpoint)[0], None)
        dims = config_to_dict(load_config(os.path.join(ROOT, "configs/whisper/tiny.py")))["dims"]
        return AudioFeatureExtractor(params, stored or dims)
    if weights == "fixture":
        from lipsync_jax.convert.whisper import convert_state_dict
        from lipsync_jax.golden.core import load_fixture

        fixture = load_fixture(FIXTURE)
        params, report = convert_state_dict(fixture.weights_f32(), fixture.config)
        report.raise_if_problems("fixture weights")
        return AudioFeatureExtractor(params, fixture.config)
    config = config_to_dict(load_config(os.path.join(ROOT, "configs/whisper/tiny.py")))
    dims = WhisperEncoderConfig.from_config(config["dims"])
    return AudioFeatureExtractor(init_params(jax.random.key(seed), dims), dims)


def _switches(pairs: np.ndarray, ratios: np.ndarray, per_second: float) -> dict:
    """Worst ratio per window switch: pairs closer than 2 s belong to the same switch."""
    groups: list[list[int]] = []
    for k, pair in enumerate(pairs):
        if groups and pair - pairs[groups[-1][-1]] <= 2 * per_second:
            groups[-1].append(k)
        else:
            groups.append([k])
    return {f"{pairs[g[0]] / per_second:.1f}s": round(float(ratios[g].max()), 2) for g in groups}


def seams(extractor, audio: np.ndarray, windows: str, fps: float = 25.0) -> dict:
    from lipsync_jax.audio import frame_chunk_indices, gather_frame_windows
    from lipsync_jax.audio.windows import seam_ratios, source_ids, window_count

    begin = time.perf_counter()
    embeddings = extractor.clip_embeddings(audio, windows)
    took = time.perf_counter() - begin
    window_rows = extractor.config.n_audio_ctx
    count = window_count(len(embeddings), windows, window_rows)
    sources = source_ids(np.arange(len(embeddings)), windows, window_rows, count)  # (T,)
    indices = frame_chunk_indices(len(embeddings), fps)
    frame_pairs, frame_ratios = seam_ratios(gather_frame_windows(embeddings, indices), sources[indices])
    row_pairs, row_ratios = seam_ratios(embeddings, sources[:, None])
    everywhere = seam_ratios(gather_frame_windows(embeddings, indices), np.arange(len(indices))[:, None])[1]
    return dict(windows=count, rows=len(embeddings), frames=len(indices), frame_seam_pairs=len(frame_pairs),
                worst_frame=round(float(frame_ratios.max()), 2), worst_row=round(float(row_ratios.max()), 2),
                ordinary_frame_p99=round(float(np.percentile(everywhere, 99)), 2),
                frame_switches=_switches(frame_pairs, frame_ratios, fps),
                row_switches=_switches(row_pairs, row_ratios, 50.0), encode_seconds=round(took, 2))


def live_seams(extractor, audio: np.ndarray, windows: str, fps: float = 25.0) -> dict:
    """The seam of the windows a live session computes (``stream_windows``, 40 ms pieces)."""
    from lipsync_jax.audio import frame_chunk_indices
    from lipsync_jax.audio.windows import seam_ratios, source_ids
    from lipsync_jax.live.audio_online import stream_windows

    begin = time.perf_counter()
    online = stream_windows(extractor, audio, piece=640, fps=fps, windows=windows)
    took = time.perf_counter() - begin
    rows = len(audio) // 160 // 2
    indices = frame_chunk_indices(rows, fps)[:len(online)]
    pairs, ratios = seam_ratios(online, source_ids(indices, windows, extractor.config.n_audio_ctx))
    return dict(frames=len(online), worst_frame=round(float(ratios.max()), 2),
                frame_switches=_switches(pairs, ratios, fps), seconds=round(took, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=70.0)
    parser.add_argument("--weights", default="flax", choices=["flax", "fixture"])
    parser.add_argument("--seed", type=int, default=2, help="flax init seed (build_models uses seed + 2 = 2)")
    parser.add_argument("--whisper_checkpoint", default="",
                        help="trained Whisper-tiny weights (converted folder or tiny.pt) instead of --weights")
    parser.add_argument("--live", action="store_true", help="also the live session's online windows (minutes)")
    args = parser.parse_args()

    import jax

    audio = speech(args.seconds)
    extractor = extractor_for(args.weights, args.seed, args.whisper_checkpoint)
    if args.whisper_checkpoint:
        args.weights = "checkpoint"
    one = np.zeros((1, extractor.config.n_frames, extractor.config.n_mels), np.float32)
    extractor.encode_windows(one)  # compile
    per_window = []
    for _ in range(3):
        begin = time.perf_counter()
        extractor.encode_windows(one)
        per_window.append(time.perf_counter() - begin)
    result = {mode: seams(extractor, audio, mode) for mode in ("latentsync", "sliding")}
    if args.live:
        for mode in ("latentsync", "sliding"):
            result[mode]["live"] = live_seams(extractor, audio, mode)
    summary = dict(device=f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})",
                   audio_seconds=args.seconds, weights=args.weights, dims=str(extractor.config),
                   encoder_seconds_per_window=round(float(np.median(per_window)), 2), **result,
                   frame_latentsync_over_sliding=round(result["latentsync"]["worst_frame"]
                                                       / result["sliding"]["worst_frame"], 2),
                   row_latentsync_over_sliding=round(result["latentsync"]["worst_row"]
                                                     / result["sliding"]["worst_row"], 2))
    print(json.dumps(summary, indent=1))
    for mode in ("latentsync", "sliding"):
        r = result[mode]
        print(f"| {args.weights} | {mode} | {r['windows']} | {r['worst_frame']} "
              f"({', '.join(f'{k}: {v}' for k, v in r['frame_switches'].items())}) | {r['worst_row']} "
              f"({', '.join(f'{k}: {v}' for k, v in r['row_switches'].items())}) | {r['ordinary_frame_p99']} | "
              f"{r['live']['worst_frame'] if args.live else '-'} | {r['encode_seconds']} |")

if __name__ == "__main__":
    main()
