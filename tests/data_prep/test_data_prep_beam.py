"""data_prep as an Apache Beam pipeline (DirectRunner) gives the same dataset, records and
statistics as the local path, on two short scaled-down demo clips (the real face pipeline)."""

import json
import os
import subprocess

import pytest

from data_prep.cli import main
from data_prep.clips import PrepOptions
from data_prep.prepare import prepare
from data_prep.stats import read_table
from lipsync_jax.data import records
from lipsync_jax.media import ffmpeg_exe
from tests.helpers.paths import asset_path

pytestmark = pytest.mark.integration

pytest.importorskip("apache_beam", reason="optional extra: pip install -r requirements-beam.txt")

RES = 64
SECONDS = 4


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beam_videos")
    for name in ("demo1", "demo2"):
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", asset_path(f"{name}_video.mp4"), "-t", str(SECONDS),
                        "-vf", "scale=360:640", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac",
                        str(folder / f"{name}.mp4")], check=True)
    return folder


def _dataset_records(root):
    folder = records.dataset_dir(str(root))
    info = json.loads(open(os.path.join(folder, "dataset_info.json")).read())
    shards = sorted(f for f in os.listdir(folder) if ".array_record-" in f)
    items = [item for shard in shards for item in records.read_records(os.path.join(folder, shard))]
    return shards, info["splits"][0]["shardLengths"], info["splits"][0]["numBytes"], items


def test_beam_direct_runner_equals_local(sources, tmp_path):
    paths = sorted(str(p) for p in sources.iterdir())
    options = PrepOptions(resolution=RES, min_seconds=2.0, max_seconds=2.0, max_source_seconds=SECONDS)
    local = prepare(paths, str(tmp_path / "local"), options, num_workers=0, records_per_shard=3)
    args = ["--input_dir", str(sources), "--output_dir", str(tmp_path / "beam"), "--resolution", str(RES),
            "--min_seconds", "2", "--max_seconds", "2", "--max_source_seconds", str(SECONDS),
            "--records_per_shard", "3", "--runner=DirectRunner", "--direct_num_workers=1"]
    assert main(args) == 0
    beam = json.loads((tmp_path / "beam" / "summary.json").read_text())
    assert local["kept_clips"] == beam["kept_clips"] == 4  # two 2 s clips per source
    shards_l, lengths_l, bytes_l, items_l = _dataset_records(tmp_path / "local")
    shards_b, lengths_b, bytes_b, items_b = _dataset_records(tmp_path / "beam")
    assert shards_l == shards_b and len(shards_b) == 2
    assert lengths_l == lengths_b == ["3", "1"] and bytes_l == bytes_b
    assert len(items_b) == 4 and items_l == items_b  # byte-identical records, same order
    assert read_table(tmp_path / "local" / "clips.csv") == read_table(tmp_path / "beam" / "clips.csv")
    assert local["statistics"]["kept_per_stage"] == beam["statistics"]["kept_per_stage"]
    assert sorted(os.listdir(tmp_path / "beam" / "stats")) == [
        "clips_per_stage.png", "quality.png", "summary.json", "sync_confidence.png"]
    leftovers = [f for f in os.listdir(tmp_path / "beam" / records.DEFAULT_NAME) if f != records.DEFAULT_VERSION]
    assert leftovers == []  # no staging folders left behind
    # a rerun reuses every finished source and rebuilds the same dataset
    assert main(args) == 0
    again = json.loads((tmp_path / "beam" / "summary.json").read_text())
    assert again["processed_this_run"] == 0 and again["reused"] == 2
    assert _dataset_records(tmp_path / "beam")[3] == items_b
