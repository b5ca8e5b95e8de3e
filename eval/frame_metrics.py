"""PSNR and SSIM of a generated video against a reference video, frame by frame (e.g. a
self-reconstruction with the original audio against the original video).

    python eval/frame_metrics.py --generated OUT.mp4 --reference IN.mp4 [--region frame|mouth|both] \\
        [--resolution 256] [--max_frames N] [--json out.json]

(--video is an alias of --generated.) --region mouth compares the lower half of the aligned face
(faces found in the reference; the same crop is taken from both videos). Library:
lipsync_jax.eval.video_metrics (video_metrics) and lipsync_jax.eval.frame_metrics (psnr, ssim on
arrays). Exit status: 0 done, 1 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generated", "--video", dest="generated", required=True, help="generated video")
    parser.add_argument("--reference", required=True, help="reference video (same size)")
    parser.add_argument("--region", choices=("frame", "mouth", "both"), default="frame",
                        help="whole frames, the aligned face's lower half, or both")
    parser.add_argument("--resolution", type=int, default=256, help="aligned face size for --region mouth")
    parser.add_argument("--max_frames", type=int, default=None, help="compare at most this many frames")
    parser.add_argument("--json", default=None, help="write the results (with per-frame values) here")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def run(args: argparse.Namespace) -> int:
    from lipsync_jax.eval.report import write_json
    from lipsync_jax.eval.video_metrics import video_metrics

    regions = ("frame", "mouth") if args.region == "both" else (args.region,)
    results = {}
    for region in regions:
        metrics = video_metrics(args.generated, args.reference, region=region, resolution=args.resolution,
                                max_frames=args.max_frames)
        results[region] = metrics.to_dict()
        print(f"{region}: PSNR {metrics.psnr:.2f} dB (per-frame mean {metrics.psnr_frame_mean:.2f}), "
              f"SSIM {metrics.ssim:.4f} over {metrics.compared_frames.size} frames "
              f"(generated {metrics.frame_counts[0]}, reference {metrics.frame_counts[1]}"
              + (f", {len(metrics.frames_without_face)} without a face" if region == "mouth" else "") + ")")
    if args.json:
        write_json(args.json, results)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from lipsync_jax.eval.cli import run_main
    from lipsync_jax.eval.report import INPUT_ERRORS

    return run_main(run, args, INPUT_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
