"""Short clips cut from the bundled demo videos with ffmpeg."""

import subprocess

from lipsync_jax.media import ffmpeg_exe
from tests.helpers.paths import TWO_PEOPLE_HALF_WIDTH, TWO_PEOPLE_HEIGHT, TWO_PEOPLE_SECONDS, asset_path


def make_clip(path, *, seconds, size="540:960", fps=None, black_frames=None, black=False,
              source="demo1_video.mp4"):
    """The first ``seconds`` of a demo video scaled to ``size`` (width:height), resampled to ``fps``
    if given, black over frames ``black_frames`` (first, last) or over every frame (``black``)."""
    filters = ([f"fps={fps}"] if fps else []) + [f"scale={size}"]
    if black:
        filters.append("drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill")
    elif black_frames:
        first, last = black_frames
        filters.append(f"drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,{first},{last})'")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", asset_path(source), "-t", str(seconds),
                    "-vf", ",".join(filters), "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12",
                    str(path)], check=True)
    return str(path)


def _encode(args, path):
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args, "-an", "-c:v", "libx264", "-preset",
                    "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p", str(path)], check=True)


def two_people_clips(folder):
    """demo1 alone (``one``) and demo1 | demo2 side by side (``two``), TWO_PEOPLE_SECONDS long, in ``folder``."""
    one, two = folder / "one_person.mp4", folder / "two_people.mp4"
    demo1, demo2 = asset_path("demo1_video.mp4"), asset_path("demo2_video.mp4")
    scale = f"scale={TWO_PEOPLE_HALF_WIDTH}:{TWO_PEOPLE_HEIGHT}"
    seconds = str(TWO_PEOPLE_SECONDS)
    _encode(["-t", seconds, "-i", demo1, "-vf", scale], one)
    _encode(["-t", seconds, "-i", demo1, "-t", seconds, "-i", demo2, "-filter_complex",
             f"[0:v]{scale}[l];[1:v]{scale}[r];[l][r]hstack=inputs=2[v]", "-map", "[v]"], two)
    return {"one": str(one), "two": str(two), "folder": folder}
