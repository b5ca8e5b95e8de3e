"""The docs' "Fine-tune on your own videos" block (docs/training.md), run as written (bash), on two demo videos
with the tiny random model: split -> data_prep -> train.py (2 steps from a 'pretrained' tiny UNet)
-> export -> infer.py with the fine-tuned UNet."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from lipsync_jax.config_utils import PROJECT_ROOT
from lipsync_jax.media.ffmpeg import ffmpeg_exe
from lipsync_jax.train.metrics import read_metrics
from tests.helpers.paths import asset_path

SECTION = "## Fine-tune on your own videos"  # in docs/training.md


def docs_block() -> str:
    """The first ```bash block of that section (lines that set the variables removed: the test sets
    them)."""
    with open(os.path.join(PROJECT_ROOT, "docs", "training.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assignments = re.compile(r"^(VIDEOS|WORK|CONFIG|BASE|RES|STEPS|VAE|WHISPER|SPEECH)=")
    return "\n".join(line for line in block.splitlines() if not assignments.match(line))


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


# data_prep on one video, the tiny UNet step compiled, export, inference (all subprocesses)
@pytest.mark.slow
def test_docs_finetune_block_runs_on_the_demo_videos(tmp_path):
    import dataclasses

    from lipsync_jax.checkpoints import read_metadata, restore_params, save_params
    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline import build_models

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("demo1", "demo2"):  # 6 s, 360x640 H.264 copies (the originals are 1080x1920 HEVC)
        _ffmpeg("-i", asset_path(f"{name}_video.mp4"), "-t", "6", "-vf", "scale=360:640", "-c:v", "libx264",
                "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(videos / f"{name}.mp4"))
    speech = tmp_path / "speech.wav"
    _ffmpeg("-i", asset_path("demo2_audio.wav"), "-t", "1.5", str(speech))
    # the "official" weights: a random tiny UNet, VAE and Whisper as converted folders
    config = load_config(os.path.join(PROJECT_ROOT, "configs/unet/finetune.py:tiny"))
    models = build_models(config, random_init=True, seed=0)
    save_params(tmp_path / "base_unet", models.unet_params, None)
    save_params(tmp_path / "vae", models.vae_params, None)
    save_params(tmp_path / "whisper", models.audio.params, {"dims": dataclasses.asdict(models.audio.config)})

    work = tmp_path / "work"
    env = dict(os.environ, VIDEOS=str(videos), WORK=str(work), CONFIG="configs/unet/finetune.py:tiny",
               BASE=str(tmp_path / "base_unet"), RES="64", STEPS="2", VAE=str(tmp_path / "vae"),
               WHISPER=str(tmp_path / "whisper"), SPEECH=str(speech), JAX_PLATFORMS="cpu",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", docs_block()], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=2400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # bash and the python it is running
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-4000:]

    train_list = (work / "train_files.txt").read_text().split()
    val_list = (work / "val_files.txt").read_text().split()
    assert len(train_list) == 1 and len(val_list) == 1 and set(train_list) != set(val_list)
    from lipsync_jax.data.records import ClipDataSource

    clips = ClipDataSource(str(work / "clips"))
    sources = {os.path.basename(str(clips[i]["source"].decode() if isinstance(clips[i]["source"], bytes)
                                    else clips[i]["source"])) for i in range(len(clips))}
    assert sources == {os.path.basename(train_list[0])}  # the held-out video stays out of the dataset
    records = read_metrics(str(work / "run"))
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert records[0]["lr"] == 0.0 and records[1]["lr"] == pytest.approx(1e-6 / 200)  # warmup of the recipe
    exported, _ = restore_params(work / "unet")
    assert read_metadata(work / "unet")["training_step"] == 2
    base = models.unet_params
    import jax
    assert jax.tree.structure(exported) == jax.tree.structure(base)
    # fine-tuned from BASE (lr 5e-9 in the first warmup steps), not from a fresh init
    assert all(np.allclose(np.asarray(a), np.asarray(b), atol=1e-6) for a, b in
               zip(jax.tree.leaves(exported), jax.tree.leaves(base)))
    assert (work / "lipsync.mp4").stat().st_size > 0
    assert "wrote" in stdout


def test_split_holds_out_whole_videos_reproducibly(tmp_path):
    from data_prep.split import main as split_main

    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.mov", "sub/c.mp4", "notes.txt"):
        (videos / name).write_bytes(b"x")
    lists = tmp_path / "lists"
    assert split_main(["--input_dir", str(videos), "--output_dir", str(lists), "--val_count", "1"]) == 0
    train = (lists / "train_files.txt").read_text().splitlines()
    val = (lists / "val_files.txt").read_text().splitlines()
    assert len(train) == 2 and len(val) == 1 and not set(train) & set(val)
    assert sorted(os.path.basename(p) for p in train + val) == ["a.mp4", "b.mov", "c.mp4"]
    assert split_main(["--input_dir", str(videos), "--output_dir", str(lists), "--val_count", "1"]) == 0
    assert (lists / "val_files.txt").read_text().splitlines() == val  # same split on a rerun
    assert split_main(["--input_dir", str(videos), "--output_dir", str(lists), "--val_count", "3"]) == 2
    assert split_main(["--input_dir", str(tmp_path / "missing"), "--output_dir", str(lists)]) == 2
