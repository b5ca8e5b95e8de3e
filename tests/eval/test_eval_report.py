"""The evaluation report (python -m lipsync_jax.eval.report): pairing by file name, CSV /
Markdown / JSON / PNG plots from short demo clips with random narrowed networks, and bad inputs
(unreadable file, audio shorter than 5 frames, no face, missing reference) as error rows."""

import csv
import json
import os
import subprocess
import wave

import numpy as np
import pytest
from PIL import Image

from lipsync_jax.eval import report as report_mod
from lipsync_jax.media import ffmpeg_exe
from tests.helpers.paths import asset_path

CLIP_FRAMES = 40  # FVD reads frames 20..35


def _cut(src, start, dst, crf):
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-ss", str(start), "-i", src, "-frames:v",
                    str(CLIP_FRAMES), "-t", str(CLIP_FRAMES / 25), "-vf", "scale=240:426", "-c:v", "libx264",
                    "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-c:a", "aac", str(dst)],
                   check=True)


def _write_wav(path, seconds):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(int(16000 * seconds)) / 5.0) * 8000).astype(np.int16).tobytes())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """generated/: a, b (re-encoded at low quality: stand-ins for model outputs), broken.mp4
    (not a video, no reference); reference/: a, b; audio/: b.wav, 0.1 s (too short for LSE)."""
    root = tmp_path_factory.mktemp("report_inputs")
    for name in ("generated", "reference", "audio"):
        (root / name).mkdir()
    for name, src, start in (("a", "demo1_video.mp4", 0.0), ("b", "demo2_video.mp4", 2.0)):
        _cut(asset_path(src), start, root / "reference" / f"{name}.mp4", 18)
        _cut(asset_path(src), start, root / "generated" / f"{name}.mp4", 40)
    (root / "generated" / "broken.mp4").write_bytes(b"not a video at all")
    _write_wav(root / "audio" / "b.wav", 0.1)
    return root


def test_pair_by_name(folders, tmp_path):
    (tmp_path / "gen").mkdir()
    (tmp_path / "ref").mkdir()
    for name in ("x.mp4", "y.mp4", "notes.txt"):
        (tmp_path / "gen" / name).write_bytes(b"")
    for name in ("x.mov", "z.mp4"):
        (tmp_path / "ref" / name).write_bytes(b"")
    (tmp_path / "gen" / "y.wav").write_bytes(b"")
    pairs = report_mod.pair_by_name(str(tmp_path / "gen"), str(tmp_path / "ref"))
    assert [(n, os.path.basename(g), r and os.path.basename(r), a and os.path.basename(a)) for n, g, r, a in pairs] \
        == [("x", "x.mp4", "x.mov", None), ("y", "y.mp4", None, "y.wav")]
    pairs = report_mod.pair_by_name(str(folders / "generated"), str(folders / "reference"), str(folders / "audio"))
    assert [(n, r is not None, a and os.path.basename(a)) for n, _, r, a in pairs] == \
        [("a", True, None), ("b", True, "b.wav"), ("broken", False, None)]


@pytest.mark.integration
def test_report_folder_with_table_plots_and_error_rows(folders, tmp_path, capsys):
    out = tmp_path / "report"
    code = report_mod.main(["--generated", str(folders / "generated"), "--reference", str(folders / "reference"),
                            "--audio_dir", str(folders / "audio"), "--out", str(out), "--random_init",
                            "--narrow_by", "8", "--min_track", "10", "--i3d_batch_size", "2", "--no_progress"])
    captured = capsys.readouterr()
    assert code == 1  # some videos have errors; the batch still finished
    assert "MEANINGLESS" in captured.err and "Traceback" not in captured.err
    assert sorted(os.listdir(out)) == sorted(report_mod.REPORT_FILES.values())

    with open(out / "report.csv", newline="") as f:
        rows = {row["video"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["a", "b", "broken", "overall"]
    a, b, broken, overall = rows["a"], rows["b"], rows["broken"], rows["overall"]
    assert a["error"] == ""
    assert np.isfinite(float(a["lse_c"])) and float(a["lse_d"]) > 0 and -15 <= int(a["av_offset"]) <= 15
    assert int(a["num_windows"]) == CLIP_FRAMES - 5
    for row in (a, b):  # low-quality re-encodes of the references
        assert 0.3 < float(row["ssim"]) < 1.0 and 15 < float(row["psnr"]) < 60
    assert "audio too short" in b["error"] and "b.wav" in b["error"] and b["lse_c"] == ""
    assert "broken.mp4" in broken["error"] and "no reference video named broken" in broken["error"]
    assert "FVD clip left out" in broken["error"] and broken["ssim"] == ""
    assert float(overall["lse_c"]) == pytest.approx(float(a["lse_c"]))  # the mean over scored videos
    assert float(overall["ssim"]) == pytest.approx((float(a["ssim"]) + float(b["ssim"])) / 2)
    assert np.isfinite(float(overall["fvd"])) and "1 of 3 videos without errors" in overall["error"]

    table = (out / "report.md").read_text()
    assert "| video | LSE-C | LSE-D | offset | FVD | SSIM | PSNR (dB) | note |" in table
    assert table.count("\n| ") >= 5 and "| **overall** |" in table and "MEANINGLESS" in table
    assert "audio too short" in table and "lse_distance_vs_offset.png" in table
    assert "| **overall** |" in captured.out  # the table is printed too

    data = json.loads((out / "report.json").read_text())
    assert data["random_init"] is True and data["fvd"]["num_generated"] == 2
    track = data["videos"][0]["lse"]["tracks"][0]
    assert track["offsets"] == list(range(-15, 16)) and len(track["window_conf_smoothed"]) == CLIP_FRAMES - 5
    for name in ("lse_distance_vs_offset.png", "lse_confidence_over_time.png", "metric_distributions.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
            assert np.asarray(image.convert("L")).std() > 5  # something was drawn


@pytest.mark.integration
def test_video_without_face_is_an_error_row(folders):
    from lipsync_jax.eval.lse import load_lse_syncnet, load_s3fd
    from lipsync_jax.eval.lse_tracks import DetectSettings

    detector = load_s3fd(random_init=True, narrow_by=8)
    for name, head in detector.params.items():
        if name.startswith("conf_"):
            head["bias"][-1] = -8.0  # nothing scores as a face
    nets = report_mod.ReportNets(load_lse_syncnet(random_init=True, narrow_by=8), detector, i3d=None)
    options = report_mod.ReportOptions(DetectSettings(min_track=4), max_frames=8)
    video = report_mod.evaluate_video("a", str(folders / "generated" / "a.mp4"), str(folders / "reference" / "a.mp4"),
                                      None, nets, options, progress=False)
    assert video.lse is None and video.frames is not None and video.frames.compared_frames.size == 8
    (error,) = video.errors
    assert error.startswith("LSE: ") and "a.mp4: no face track" in error
    row = video.row()
    assert row["error"] == error and "lse_c" not in row and 0 < row["ssim"] < 1


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    code = report_mod.main(["--generated", str(tmp_path / "missing"), "--reference", str(tmp_path),
                            "--out", str(tmp_path / "out"), "--random_init"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: ") and "missing" in err[-1]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        report_mod.main(["--generated", str(tmp_path), "--reference", str(tmp_path), "--out", str(tmp_path / "o")])
