"""Shared by tests/test_engine.py and tests/test_stream.py: the tiny random-weight models, the
sampling settings both compare under, and 540x960 cuts of the demo video. Each test module
still builds its own models in its own module-scoped fixture (what compiles is unchanged)."""

import os
import subprocess

from conftest import asset_path

from lipsync_jax.media import ffmpeg_exe

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "unet", "tiny.py")
STEPS, GUIDANCE, SEED = 2, 1.5, 11
ROUNDOFF = 2e-4  # generated faces in [-1, 1] after 2 random-weight UNet steps + VAE, float32


def build_tiny_models():
    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline import build_models

    return build_models(load_config(TINY), random_init=True, seed=0)


def make_clip(path, *, seconds, black_frames=None):
    """The demo video's first ``seconds`` at 540x960, black over frames ``black_frames`` (first, last)."""
    filters = ["scale=540:960"]
    if black_frames:
        first, last = black_frames
        filters.append(f"drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,{first},{last})'")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", asset_path("demo1_video.mp4"), "-t", str(seconds),
                    "-vf", ",".join(filters), "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12",
                    str(path)], check=True)
    return str(path)
