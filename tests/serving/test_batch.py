"""Batch jobs (lipsync_jax/serving/batch.py, batch_jobs.py, fingerprint.py): the table formats, the
settings records that decide what a rerun skips, the command lines (``python -m lipsync_jax.batch``
and ``infer.py --batch``) and a batch on one service: a failed row is recorded and the others go
on, finished outputs are skipped on rerun, the models are compiled once. The Beam runner:
tests/serving/test_batch_beam.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from lipsync_jax import config_utils
from lipsync_jax.media import probe_video
from lipsync_jax.pipeline import JobDefaults
from lipsync_jax.pipeline.job import Request, Sampling, SyncJob
from lipsync_jax.serving.batch import BatchFileError, parse_rows, read_jobs, run_jobs, summary_table
from lipsync_jax.serving.batch_jobs import BatchOutcome, format_results, read_results, write_results
from lipsync_jax.serving.fingerprint import (
    check_finished,
    job_settings,
    model_identity,
    record_path,
    remove_leftovers,
    write_record,
)
from tests.helpers.clips import make_clip
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path


def write_csv(path, text):
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- the CSV format

def test_read_jobs_resolves_paths_and_optional_columns(tmp_path):
    jobs = write_csv(tmp_path / "jobs.csv", "video,audio,output,seed,guidance,face\n"
                                            "a.mp4,a.wav,out/a.mp4,3,2.0,left\n"
                                            "\n"
                                            f"{tmp_path}/b.mp4,b.wav,out/b.mp4,,,\n")
    rows = read_jobs(jobs)
    assert [r.line for r in rows] == [2, 4] and [r.job_id for r in rows] == ["2", "4"]
    assert rows[0].video == str(tmp_path / "a.mp4") and rows[0].output == str(tmp_path / "out" / "a.mp4")
    first, second = parse_rows(jobs, rows, JobDefaults(seed=5), {"steps": "4"})
    assert (first.job.seed, first.sampling.guidance, first.sampling.steps, first.job.face) == (3, 2.0, 4, "left")
    assert (second.job.seed, second.sampling.guidance, second.job.face) == (5, 1.5, "largest")


def test_jsonl_tables_read_like_csv(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"video": "a.mp4", "audio": "a.wav", "output": "o.mp4", "seed": 3, "guidance": null}\n\n'
                    '{"video": "b.mp4", "audio": "b.wav", "output": "p.mp4", "steps": "2"}\n')
    rows = read_jobs(str(jobs))
    assert [r.line for r in rows] == [1, 3] and rows[0].values == {"seed": "3"} and rows[1].values == {"steps": "2"}
    jobs.write_text('["a.mp4"]\n')
    with pytest.raises(BatchFileError, match="line 1: a job is a JSON object"):
        read_jobs(str(jobs))


@pytest.mark.parametrize("text, needle", [
    ("video,audio\nx.mp4,y.wav\n", "missing column(s) output"),
    ("video,audio,output,speed\na,b,c.mp4,1\n", "unknown column(s) speed"),
    ("video,audio,output\na,,c.mp4\n", "line 2: empty audio"),
    ("video,audio,output\na,b,c.mp4\nd,e,c.mp4\n", "line 3: output"),
    ("id,video,audio,output\nx,a,b,c.mp4\nx,d,e,f.mp4\n", "line 3: id x is also the id of line 2"),
    ("video,audio,output\n", "no jobs"),
])
def test_bad_jobs_files_are_refused_with_the_line(tmp_path, text, needle):
    with pytest.raises(BatchFileError) as caught:
        read_jobs(write_csv(tmp_path / "jobs.csv", text))
    assert needle in str(caught.value) and "jobs.csv" in str(caught.value)


@pytest.mark.parametrize("column, value, needle", [
    ("seed", "abc", "line 2: seed 'abc': must be a whole number in 0..4294967295"),
    ("guidance", "nan", "line 2: guidance nan: must be a finite number >= 0"),
    ("steps", "0", "line 2: steps 0: must be a whole number >= 1"),
    ("max_seconds", "-1", "line 2: max_seconds -1: must be a finite number >= 0.04"),
])
def test_bad_values_are_refused_with_the_line_and_the_same_message_as_the_flags(tmp_path, column, value, needle):
    jobs = write_csv(tmp_path / "jobs.csv", f"video,audio,output,{column}\na,b,c.mp4,{value}\n")
    with pytest.raises(BatchFileError) as caught:
        parse_rows(jobs, read_jobs(jobs), JobDefaults())
    assert needle in str(caught.value) and "jobs.csv" in str(caught.value)


def test_id_column_names_jobs_and_is_not_a_setting(tmp_path):
    jobs = write_csv(tmp_path / "jobs.csv", "id,video,audio,output,seed\nanna_es,a.mp4,a.wav,a.mp4,3\n")
    (row,) = read_jobs(jobs)
    assert row.job_id == "anna_es" and row.values == {"seed": "3"}


def test_result_table_as_csv_and_jsonl(tmp_path):
    jobs = write_csv(tmp_path / "jobs.csv", "id,video,audio,output\nanna,a.mp4,a.wav,a.mp4\n,b.mp4,b.wav,b.mp4\n")
    rows = read_jobs(jobs)
    outcomes = [BatchOutcome(rows[0], "done", 12.345, "16 frames", 16),
                BatchOutcome(rows[1], "failed", 0.0, "audio b.wav: no such file")]
    for name in ("results.csv", "results.jsonl"):
        write_results(str(tmp_path / name), outcomes)
        table = read_results(str(tmp_path / name))
        assert [(r["id"], r["line"], r["status"], r["frames"], r["message"]) for r in table] == [
            ("anna", "2", "done", "16", "16 frames"), ("3", "3", "failed", "0", "audio b.wav: no such file")]
        assert float(table[0]["seconds"]) == 12.35 and table[1]["output"] == str(tmp_path / "b.mp4")
    header = format_results("x.csv", outcomes).splitlines()[0]
    assert header == "id,line,status,frames,seconds,output,video,audio,message"
    assert all(json.loads(line) for line in format_results("x.jsonl", outcomes).splitlines())


# ---------------------------------------------------------------- settings records: what a rerun skips

@pytest.fixture(scope="module")
def tiny_model():
    return model_identity(config_utils.load_config(TINY_CONFIG), random_init=True)


def _request(tmp_path, **changes):
    video, audio = tmp_path / "v.mp4", tmp_path / "a.wav"
    for path in (video, audio):
        if not path.exists():
            path.write_bytes(b"media")
    job = SyncJob(str(video), str(audio), str(tmp_path / "out.mp4"), seed=changes.pop("seed", 1))
    return Request(job, dataclasses.replace(Sampling(), **changes))


def test_settings_record_decides_skip_or_redo(tmp_path, tiny_model):
    request = _request(tmp_path)
    settings = job_settings(request, tiny_model)
    output = tmp_path / "out.mp4"
    assert check_finished(str(output), settings).skip is False  # no output
    output.write_bytes(b"made by hand")
    kept = check_finished(str(output), settings)
    assert kept.skip and "no settings record" in kept.reason  # kept as the batch always did

    write_record(str(output), settings, frames=16, seconds=1.5)
    assert os.path.basename(record_path(str(output))) == ".out.mp4.lipsync.json"
    assert json.loads(open(record_path(str(output))).read())["settings"] == settings
    same = check_finished(str(output), job_settings(_request(tmp_path), tiny_model))
    assert same.skip and same.frames == 16 and same.reason == "finished with the same settings"

    for changes, named in (({"seed": 2}, "job.seed"), ({"steps": 3}, "sampling.steps"),
                           ({"guidance": 2.0}, "sampling.guidance")):
        redo = check_finished(str(output), job_settings(_request(tmp_path, **changes), tiny_model))
        assert not redo.skip and redo.reason == f"settings changed ({named})"
    other_dtype = {**tiny_model, "dtype": "bfloat16"}
    assert check_finished(str(output), job_settings(request, other_dtype)).reason == "settings changed (model.dtype)"
    (tmp_path / "a.wav").write_bytes(b"another audio")  # an input replaced by one of another size
    assert "inputs." in check_finished(str(output), job_settings(_request(tmp_path), tiny_model)).reason
    (tmp_path / "a.wav").write_bytes(b"media")

    output.write_bytes(b"replaced by a run stopped before its record")
    assert check_finished(str(output), settings).reason == "the output was replaced after its settings were recorded"
    open(record_path(str(output)), "w").write("{")
    assert check_finished(str(output), settings).reason == "its settings record is unreadable"


def test_model_identity_names_weights_by_content(tmp_path):
    config = config_utils.load_config(TINY_CONFIG)
    for name in ("unet", "vae", "whisper"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metadata.json").write_text(json.dumps({"source": name}))
    sources = {f"{name}_checkpoint": str(tmp_path / name) for name in ("unet", "vae", "whisper")}
    first = model_identity(config, **sources)
    (tmp_path / "copy").mkdir()
    for name in ("unet", "vae", "whisper"):  # the same files elsewhere (a copy baked into an image)
        (tmp_path / "copy" / name).mkdir()
        (tmp_path / "copy" / name / "metadata.json").write_text(json.dumps({"source": name}))
    assert model_identity(config, **{k: v.replace(str(tmp_path), str(tmp_path / "copy")) for k, v in
                                     sources.items()}) == first
    (tmp_path / "vae" / "metadata.json").write_text(json.dumps({"source": "another vae"}))
    assert model_identity(config, **sources)["weights"]["vae"] != first["weights"]["vae"]
    assert model_identity(config, random_init=True)["weights"] == {"random_init": True, "seed": 1247}


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    names = [".out.abcd12345.partial.mp4", ".out.b.abcd1234.partial.mp4", ".out.abcd1234.partial.mp4", "out.mp4",
             ".out.mp4.lipsync.json", ".outer.abcd1234.partial.mp4", ".out.abcd_123.partial.mp4"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_leftovers(str(tmp_path / "out.mp4"))
    assert [os.path.basename(p) for p in removed] == [".out.abcd1234.partial.mp4", ".out.abcd_123.partial.mp4"]
    assert sorted(os.listdir(tmp_path)) == sorted(set(names) - {os.path.basename(p) for p in removed})


# ---------------------------------------------------------------- the command lines (no model needed)

@pytest.mark.integration
@pytest.mark.parametrize("entry", ["module", "infer"])
def test_command_line_skips_done_records_failed_and_exits_1(tmp_path, entry):
    done = tmp_path / "done.mp4"
    done.write_bytes(b"finished earlier")
    jobs = write_csv(tmp_path / "jobs.csv", "video,audio,output\n"
                                            f"{asset_path('demo1_video.mp4')},{asset_path('demo1_audio.wav')},done.mp4\n"
                                            f"missing.mp4,{asset_path('demo1_audio.wav')},new.mp4\n")
    command = ([sys.executable, "-m", "lipsync_jax.batch", jobs] if entry == "module"
               else [sys.executable, os.path.join(ROOT, "infer.py"), f"--batch={jobs}"])
    proc = subprocess.run(command + [f"--config={TINY_CONFIG}", "--random_init", "--nocompile_cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "skip" in proc.stdout and "no settings record" in proc.stdout and "missing.mp4: no such file" in proc.stdout
    assert "0 done, 1 skipped, 1 failed" in proc.stdout
    assert "random weights" in proc.stderr and "meaningless" in proc.stderr  # --random_init says so
    assert done.read_bytes() == b"finished earlier" and not (tmp_path / "new.mp4").exists()


@pytest.mark.integration
def test_command_line_refuses_a_bad_jobs_file(tmp_path):
    jobs = write_csv(tmp_path / "jobs.csv", "video,output\na.mp4,b.mp4\n")
    proc = subprocess.run([sys.executable, "-m", "lipsync_jax.batch", jobs, f"--config={TINY_CONFIG}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: jobs file") and "audio" in proc.stderr


# ---------------------------------------------------------------- a batch on one service

@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=0.8, size="270:480")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from lipsync_jax.serving.service import LipsyncService

    return LipsyncService.from_config(TINY_CONFIG, random_init=True,
                                      avatar_cache=str(tmp_path_factory.mktemp("avatars")))


@pytest.mark.slow
def test_batch_goes_on_after_a_failure_and_resumes(tmp_path, clip, service):
    jobs = write_csv(tmp_path / "jobs.csv", "video,audio,output,seed,steps\n"
                                            f"{clip},{asset_path('demo1_audio.wav')},out/one.mp4,1,1\n"
                                            f"{clip},{tmp_path}/nope.wav,out/two.mp4,2,1\n"
                                            f"{clip},{asset_path('demo2_audio.wav')},out/three.mp4,3,1\n")
    rows = read_jobs(jobs)
    requests = parse_rows(jobs, rows, service.defaults, {"max_seconds": 0.6})
    lines = []
    model = model_identity(config_utils.load_config(TINY_CONFIG), random_init=True)
    outcomes = run_jobs(service, rows, requests, model=model, log=lines.append)
    compiles = [int(line.split("compiled ")[1].split(" ")[0]) if "compiled" in line else 0
                for line in lines if " wrote " in line]
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert "nope.wav: no such file" in outcomes[1].message
    assert "avatar cache stored" in outcomes[0].message and "avatar cache hit" in outcomes[2].message
    # the second job (an avatar-cache hit: its latents sampled from the cached VAE moments) runs the very
    # program the first one compiled: it compiles nothing
    assert compiles[0] > 0 and compiles[1] == 0
    for name in ("one", "three"):
        info = probe_video(str(tmp_path / "out" / f"{name}.mp4"))
        assert info.num_frames == 15 and (info.width, info.height) == (270, 480) and info.audio_codec == "aac"
    table = summary_table(outcomes)
    assert "2 done, 0 skipped, 1 failed" in table

    again = run_jobs(lambda: pytest.fail("no job to run: the models must not be loaded"), rows, requests,
                     model=model, log=lines.append)
    assert [o.status for o in again] == ["skipped", "failed", "skipped"]
    assert [o.frames for o in again] == [15, 0, 15]
    # a changed setting redoes exactly the jobs it changes
    changed = parse_rows(jobs, rows, service.defaults, {"max_seconds": 0.6, "guidance": "2.0"})
    requests[2] = changed[2]
    lines.clear()
    third = run_jobs(service, rows, requests, model=model, log=lines.append)
    assert [o.status for o in third] == ["skipped", "failed", "done"]
    assert any("redo" in line and "settings changed (sampling.guidance)" in line for line in lines)


def test_face_column_builds_a_face_pass_for_the_chosen_person(clip):
    """The ``face`` value (batch column, app field, --face): the one face chooser, a detection
    pre-pass, then the chosen track."""
    from lipsync_jax.face import FaceSelectionError
    from lipsync_jax.media import read_frames
    from lipsync_jax.pipeline import SyncJob
    from lipsync_jax.pipeline.face_choice import plan_faces

    def face_pass_for(face):
        return plan_faces(64, SyncJob(clip, "", "", face=face), backend="mediapipe", fps=25.0).new_face_pass()

    face_pass = face_pass_for("largest")
    try:
        aligned = [face_pass(frame) for frame in read_frames(clip, 25.0, max_frames=4)]
        face_pass.check_found()
    finally:
        face_pass.close()
    assert all(a is not None and a.face.shape == (64, 64, 3) for a in aligned)
    with pytest.raises(FaceSelectionError, match="7"):
        face_pass_for("7")


@pytest.mark.slow
def test_sigterm_stops_the_batch_within_seconds_with_its_summary_and_leaves_no_partial_output(tmp_path, clip):
    """A long second job is running: SIGTERM -> exit 143 within 5 s, the summary of what finished,
    the finished output kept, nothing else in the output folder, no ffmpeg child left running."""
    import signal
    import time

    out = tmp_path / "out"
    jobs = write_csv(tmp_path / "jobs.csv", "video,audio,output,max_seconds\n"
                                            f"{clip},{asset_path('demo1_audio.wav')},out/first.mp4,0.6\n"
                                            f"{clip},{asset_path('demo2_audio.wav')},out/second.mp4,12\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_jax.batch", jobs, f"--config={TINY_CONFIG}",
                             "--random_init", "--steps=1", f"--compile_cache={tmp_path / 'xla'}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:  # the second job's work folder fills up
        folders = [n for n in os.listdir(out) if n.startswith(".lipsync_")] if out.exists() else []
        if (out / "first.mp4").exists() and folders and any(os.scandir(out / folders[0])):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    signalled = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.time() - signalled < 5.0 and proc.returncode == 143, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr and "interrupted (SIGTERM)" in stderr.strip().splitlines()[-1]
    assert "1 done, 0 skipped, 0 failed, 1 stopped" in stdout, stdout
    # the finished output and its settings record; no partial second.mp4, no work folder
    assert sorted(os.listdir(out)) == sorted([os.path.basename(record_path(str(out / "first.mp4"))), "first.mp4"])
    children = subprocess.run(["pgrep", "-f", f"{out}/"], capture_output=True, text=True).stdout.split()
    assert children == []  # no ffmpeg encoder left behind

