"""Benchmark: the inference pipeline stage by stage, in frames per second, with random weights.

    python bench/bench_infer.py                                   # CPU: tiny config (64 px faces)
    python bench/bench_infer.py --config configs/unet/stage2.py   # GPU: full UNet, 256 px
    python bench/bench_infer.py --config configs/unet/stage2_512.py

Runs ``run_inference`` (random UNet/VAE/Whisper, ``--random_init`` of infer.py) on the demo clip:
first one chunk to compile everything (reported as warm-up), then ``--seconds`` of audio with a
synchronising timer, so each stage is charged for its own device work. Prints device, dtype and
shapes, then one row per stage: frames, seconds, frames per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "tests", "data", "assets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/tiny.py")
    parser.add_argument("--override", action="append", default=[], help="config override, e.g. data.resolution=512")
    parser.add_argument("--video", default=os.path.join(ASSETS, "demo1_video.mp4"))
    parser.add_argument("--audio", default=os.path.join(ASSETS, "demo1_audio.wav"))
    parser.add_argument("--seconds", type=float, default=3.84, help="audio seconds to process (96 frames)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: bfloat16 on GPU/TPU, float32 on CPU")
    parser.add_argument("--preset", default="medium", help="x264 preset of the output encode")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline import InferenceOptions, StageTimer, build_models, check_inputs, run_inference

    dtype = jnp.dtype(args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16"))
    config = load_config(args.config, args.override)
    start = time.perf_counter()
    models = build_models(config, dtype=dtype, random_init=True, seed=0)
    build_seconds = time.perf_counter() - start

    device = jax.devices()[0]
    f, r, res = models.num_frames, models.latent_size, models.resolution
    batch = 2 if args.guidance > 1 else 1
    windows = 10 * (models.audio.config.n_audio_layer + 1)
    with tempfile.TemporaryDirectory() as tmp:
        checked = check_inputs(args.video, args.audio, os.path.join(tmp, "out.mp4"))
        video = checked.video
        print(f"device: {device.platform} {device.device_kind} (x{jax.device_count()}), host {platform.machine()} "
              f"{os.cpu_count()} cpus, jax {jax.__version__}")
        print(f"config: {args.config} {' '.join(args.override)}; dtype {dtype.name}; steps {args.steps}; "
              f"guidance {args.guidance}")
        print(f"video: {video.width}x{video.height} {video.fps:g} fps; faces {res}x{res}; latents ({f}, {r}, {r}, 4); "
              f"UNet input ({batch}, {f}, {r}, {r}, {models.unet_apply.module.config.in_channels}); "
              f"audio windows ({f}, {windows}, {models.audio.config.n_audio_state})")
        print(f"random weights built in {build_seconds:.1f} s")

        def run(seconds: float, timer: StageTimer) -> float:
            options = InferenceOptions(args.video, args.audio, os.path.join(tmp, "out.mp4"), num_steps=args.steps,
                                       guidance_scale=args.guidance, max_seconds=seconds, preset=args.preset,
                                       progress=False)
            begin = time.perf_counter()
            run_inference(models, options, checked=checked, timer=timer)
            return time.perf_counter() - begin

        warmup = run(f / 25.0, StageTimer(sync=True))
        print(f"warm-up (one chunk, compiles everything): {warmup:.1f} s")
        timer = StageTimer(sync=True)
        total = run(args.seconds, timer)
        frames = round(args.seconds * 25)
        print(f"\n{frames} output frames in {total:.1f} s: {frames / total:.2f} frames/s end to end\n")
        print("| stage | frames | seconds | frames/s |")
        print("|---|---|---|---|")
        for name, count, seconds, fps in timer.rows():
            print(f"| {name} | {count or '-'} | {seconds:.2f} | {f'{fps:.1f}' if count else '-'} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
