"""List the face tracks of a video (without generating anything), with one thumbnail per track.

    python -m lipsync_jax.face.list_faces --video two_people.mp4 [--thumbs faces/]   (default: beside the video)

prints one line per track: its id (what ``--face ID`` takes), first-last frame and how many
frames it was detected in, mean box (x1, y1, x2, y2 in source pixels), mean area and the
thumbnail path (``face_<id>.jpg``: the track's largest detection with a margin, pre-pass
resolution). The tracks come from the detection pre-pass ``tracks.find_face_tracks``, so the
ids match those the inference run uses with the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from lipsync_jax.face.tracks import (
    CHOICES,
    DEFAULT_MAX_GAP,
    DEFAULT_MIN_FRAMES,
    VideoFaceTracks,
    choose_track,
    find_face_tracks,
)


@dataclasses.dataclass
class FaceListing:
    faces: VideoFaceTracks
    thumbnails: dict[int, str]  # track id -> written image path

    def lines(self) -> list[str]:
        faces = self.faces
        head = (f"{faces.video_path}: {len(faces.tracks)} face track(s) in {faces.num_frames} frames "
                f"at {faces.fps:g} fps ({faces.width}x{faces.height})")
        if not faces.tracks:
            return [head, "no face found"]
        default = choose_track(faces.tracks, "largest").track_id
        lines = [head]
        for track in faces.tracks:
            thumb = self.thumbnails.get(track.track_id, "-")
            mark = "  [default: largest]" if track.track_id == default else ""
            lines.append(f"{track.summary()}, thumbnail {thumb}{mark}")
        return lines


def write_thumbnail(path: str, image) -> None:
    """RGB uint8 image -> JPEG/PNG file (by extension); OSError when it cannot be written."""
    import cv2

    if not cv2.imwrite(path, image[:, :, ::-1].copy()):
        raise OSError(f"{path}: could not write the thumbnail image")


def list_faces(video_path: str, thumbs_dir: str | None = None, *, image_format: str = "jpg",
               **options) -> FaceListing:
    """Run the pre-pass (``find_face_tracks(video_path, **options)``) and write
    ``<thumbs_dir>/face_<id>.<image_format>`` per track (created if missing; none when
    ``thumbs_dir`` is None). Returns the tracks and the thumbnail paths."""
    if image_format not in ("jpg", "png"):
        raise ValueError(f"thumbnail format must be jpg or png, got {image_format!r}")
    faces = find_face_tracks(video_path, thumbnails=thumbs_dir is not None, **options)
    written: dict[int, str] = {}
    if thumbs_dir is not None and faces.tracks:
        os.makedirs(thumbs_dir, exist_ok=True)
        for track in faces.tracks:
            if track.thumbnail is not None:
                path = os.path.join(thumbs_dir, f"face_{track.track_id}.{image_format}")
                write_thumbnail(path, track.thumbnail)
                written[track.track_id] = path
    return FaceListing(faces, written)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lipsync_jax.face.list_faces", description=__doc__.split("\n")[0])
    parser.add_argument("--video", required=True, help="input video")
    parser.add_argument("--thumbs", default=None,
                        help="folder for one thumbnail per track (default: <video name>_faces beside the video)")
    parser.add_argument("--no_thumbs", action="store_true", help="write no thumbnails")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate the video is read at (as inference)")
    parser.add_argument("--face_backend", default="mediapipe", choices=("mediapipe", "insightface"))
    parser.add_argument("--max_num_faces", type=int, default=4, help="faces detected per frame at most")
    parser.add_argument("--max_side", type=int, default=640, help="pre-pass frames are downscaled to this longest side")
    parser.add_argument("--max_gap", type=int, default=DEFAULT_MAX_GAP,
                        help="a face missing for more frames than this ends its track")
    parser.add_argument("--min_frames", type=int, default=DEFAULT_MIN_FRAMES, help="shorter tracks are dropped")
    parser.add_argument("--max_frames", type=int, default=None, help="read only the first frames")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    thumbs = None
    if not args.no_thumbs:
        stem = os.path.splitext(os.path.basename(args.video))[0]
        thumbs = args.thumbs or os.path.join(os.path.dirname(os.path.abspath(args.video)), f"{stem}_faces")
    try:
        listing = list_faces(args.video, thumbs, fps=args.fps, backend=args.face_backend,
                             max_num_faces=args.max_num_faces, max_side=args.max_side, max_gap=args.max_gap,
                             min_frames=args.min_frames, max_frames=args.max_frames, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line instead of a traceback
        known = error.__class__.__module__.startswith("lipsync_jax") or isinstance(error, (OSError, ValueError))
        print(f"error: {error if known else f'{type(error).__name__}: {error}'}", file=sys.stderr)
        return 1
    print("\n".join(listing.lines()))
    if listing.thumbnails:
        print(f"thumbnails in {thumbs}")
    print(f"choose with --face {'|'.join(CHOICES)}|ID")
    return 0


if __name__ == "__main__":
    sys.exit(main())
