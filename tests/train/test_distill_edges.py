"""A consistency-distilled student at every door: the UNet checkpoint's "student" metadata sets
the sampling defaults where the job defaults are built (scheduler lcm, its steps, guidance 1),
a user's guidance > 1 or another scheduler is refused with one line naming the checkpoint (the
flags, a batch row, the web form), and lcm with a non-student UNet gets one warning line.

End to end (slow: compiles the tiny UNet's lcm program): a random tiny UNet exported as a
student through ``lipsync_jax.train.export``, random VAE and Whisper saved as converted folders,
and ``infer.py --checkpoint STUDENT`` writes a video sampled with lcm at the student's steps.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from lipsync_jax import checkpoints
from lipsync_jax.config_utils import load_config, resolve_path
from lipsync_jax.diffusion import DDIMScheduler, LCMScheduler
from lipsync_jax.distilled import student_metadata
from lipsync_jax.pipeline import JobDefaults, OptionError, RunOptions
from lipsync_jax.pipeline.job import parse_request, parse_sampling
from lipsync_jax.serving import flags as shared
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

TINY = TINY_CONFIG
STUDENT_STEPS = 2


def door_flags(door: str, argv: list[str]) -> flags.FlagValues:
    from lipsync_jax.serving import batch, infer_cli, live_server, webapp

    fv = flags.FlagValues()
    {"infer": infer_cli.define_flags, "batch": batch.define_flags, "app": webapp.define_flags,
     "live": live_server.define_flags}[door](fv)
    fv([door, f"--config={TINY}", *argv])
    return fv


def distill_section(**changes):
    section = load_config(resolve_path("configs/unet/distill.py:tiny")).distill.to_dict()
    section.update(changes)
    return section


@pytest.fixture(scope="module")
def fake_student(tmp_path_factory):
    """A converted folder with student metadata (its weights are never loaded here)."""
    folder = tmp_path_factory.mktemp("fake") / "student"
    params = {"conv_in": {"kernel": np.ones((3, 3, 13, 4), np.float32)}}
    block = student_metadata(distill_section(student_steps=STUDENT_STEPS))
    return checkpoints.save_params(folder, params, {"in_channels": 13}, {"student": block})


@pytest.fixture(scope="module")
def fake_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake") / "teacher"
    params = {"conv_in": {"kernel": np.ones((3, 3, 13, 4), np.float32)}}
    return checkpoints.save_params(folder, params, {"in_channels": 13}, {"source": "test"})


@pytest.mark.parametrize("door", ["infer", "batch", "app", "live"])
def test_every_door_takes_the_student_defaults_from_the_checkpoint(door, fake_student):
    _, defaults = shared.config_and_defaults(door_flags(door, [f"--checkpoint={fake_student}"]))
    s = defaults.sampling
    assert (s.solver, s.steps, s.guidance, s.deepcache_interval) == ("lcm", STUDENT_STEPS, 1.0, 0)
    assert defaults.student["student_steps"] == STUDENT_STEPS
    assert defaults.note.startswith(f"{fake_student}: consistency student") and "\n" not in defaults.note
    # the same flags with --random_init: the checkpoint is not loaded, the config decides
    _, random = shared.config_and_defaults(door_flags(door, [f"--checkpoint={fake_student}", "--random_init"]))
    assert (random.sampling.solver, random.sampling.steps, random.student) == ("ddim", 20, None)


def test_beam_workers_parse_rows_with_the_student_defaults(fake_student):
    from lipsync_jax.serving.batch_beam import LipsyncWorker, ServiceSpec

    sources = dict(unet_checkpoint=fake_student, vae_checkpoint="", whisper_checkpoint="", random_init=False)
    worker = LipsyncWorker(ServiceSpec(load_config(TINY), sources, RunOptions()))
    assert (worker.defaults.sampling.solver, worker.defaults.sampling.steps) == ("lcm", STUDENT_STEPS)
    random = LipsyncWorker(ServiceSpec(load_config(TINY), dict(sources, random_init=True), RunOptions()))
    assert random.defaults.student is None and random.defaults.sampling.solver == "ddim"


def test_user_values_win_within_the_students_rules(fake_student):
    _, defaults = shared.config_and_defaults(door_flags("infer", [f"--checkpoint={fake_student}"]))
    given = shared.sampling_values(door_flags("infer", ["--steps=1", "--scheduler=lcm", "--guidance=1"]))
    s = parse_sampling(given, defaults)
    assert (s.solver, s.steps, s.guidance) == ("lcm", 1, 1.0)
    assert parse_sampling({"guidance": 0.5}, defaults).guidance == 1.0  # no CFG either way: one program
    assert parse_sampling({"overlap": "4"}, defaults).overlap == 4


REFUSED = [("guidance", "1.5", "guidance 1.5 is refused: this student has guidance 1.5 distilled in"),
           ("scheduler", "ddim", "samples with scheduler lcm, not ddim"),
           ("steps", "51", "a consistency student samples with 1 to 50 steps"),
           ("deepcache_interval", "3", "deepcache_interval 3 does not combine with scheduler lcm")]


@pytest.mark.parametrize("flag, value, message", REFUSED)
def test_a_refusal_is_one_line_naming_the_checkpoint_at_every_door(flag, value, message, fake_student, tmp_path):
    from lipsync_jax.serving.batch import BatchFileError, parse_rows, read_jobs

    _, defaults = shared.config_and_defaults(door_flags("infer", [f"--checkpoint={fake_student}"]))
    fv = door_flags("infer", [f"--{flag}={value}"])
    with pytest.raises(OptionError) as from_flags:
        parse_request("v.mp4", "a.wav", "o.mp4", {**shared.job_values(fv), **shared.sampling_values(fv)}, defaults)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"video,audio,output,{flag}\nv.mp4,a.wav,o.mp4,{value}\n")
    with pytest.raises(BatchFileError) as from_csv:
        parse_rows(str(jobs), read_jobs(str(jobs)), defaults)
    field = shared.SAMPLING_FLAGS[flag]
    form_value = float(value) if flag == "guidance" else value  # the web form sends numbers
    with pytest.raises(OptionError) as from_form:
        parse_request("v.mp4", "a.wav", "o.mp4", {field: form_value}, defaults)
    line = str(from_flags.value)
    assert message in line and "\n" not in line
    if flag != "deepcache_interval":  # a student rule: the checkpoint is named
        assert line.startswith(f"{fake_student}: ")
    assert str(from_csv.value) == f"{jobs} line 2: {line}" and str(from_form.value) == line


def test_lcm_with_a_non_student_is_one_warning(fake_teacher):
    defaults = JobDefaults.from_config(load_config(TINY), unet_checkpoint=fake_teacher)
    assert defaults.student is None and defaults.note is None and defaults.sampling.solver == "ddim"
    lcm = parse_sampling({"solver": "lcm", "steps": "4"}, defaults)
    assert (lcm.solver, lcm.steps, lcm.guidance) == ("lcm", 4, 1.5)  # allowed, as given
    warning = defaults.lcm_warning(lcm)
    assert warning.startswith("WARNING: scheduler lcm") and fake_teacher in warning and "\n" not in warning
    assert defaults.lcm_warning(defaults.sampling) is None
    config = load_config(TINY, overrides=["run.scheduler=lcm"])  # the config's own default: warned at once
    assert JobDefaults.from_config(config, unet_checkpoint=fake_teacher).note.startswith("WARNING")


@pytest.mark.integration
def test_the_service_samples_a_student_with_its_scheduler_and_says_so_once(fake_student, tiny_models, capsys,
                                                                           tmp_path):
    from lipsync_jax.serving.service import LipsyncService

    config = load_config(TINY)
    lines = []
    defaults = JobDefaults.from_config(config, unet_checkpoint=fake_student)
    service = LipsyncService(tiny_models, defaults, RunOptions(), log=lines.append)
    assert isinstance(service.models.scheduler, LCMScheduler) and service.models.scheduler.config.origin_steps == 50
    assert lines == [defaults.note]
    service.announce(defaults.sampling)
    assert lines == [defaults.note]  # once
    service.close()

    teacher = LipsyncService(tiny_models, JobDefaults.from_config(config), RunOptions(), log=lines.append)
    assert isinstance(teacher.models.scheduler, DDIMScheduler)
    lcm = parse_sampling({"solver": "lcm"}, teacher.defaults)
    teacher.announce(lcm)
    teacher.announce(lcm)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING: scheduler lcm") and "random weights" in err[0]
    teacher.close()


# ---------------------------------------------------------------- end to end

def export_tiny_student(folder) -> str:
    """A random tiny UNet saved as a training checkpoint and exported as a distillation run's student."""
    from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params
    from lipsync_jax.models.unet_config import UNet3DConfig
    from lipsync_jax.train.checkpointing import TrainCheckpointer
    from lipsync_jax.train.export import export
    from lipsync_jax.train.state import TrainState, make_optimizer
    from lipsync_jax.train.unet_setup import INIT_SHAPE
    from lipsync_jax.tree_utils import random_params

    config = load_config(resolve_path("configs/unet/distill.py:tiny"),
                         overrides=[f"distill.student_steps={STUDENT_STEPS}"])
    unet = UNet3DConditionModel(UNet3DConfig.from_dict(config.model.to_dict()))
    params = random_params(abstract_params(unet, INIT_SHAPE + (unet.config.in_channels,)), seed=0)
    tx, _ = make_optimizer(dict(lr=1e-5), 10)
    ckpt = TrainCheckpointer(str(folder / "run"), save_every=1)
    ckpt.save(1, TrainState.create(params, tx, jax.random.key(0)), {"next_step": 1})
    ckpt.close()
    return export(str(folder / "run"), str(folder / "student"), config)


def save_random_vae_and_whisper(folder, models) -> tuple[str, str]:
    vae = checkpoints.save_params(str(folder / "vae"), models.vae_params, None)
    whisper = checkpoints.save_params(str(folder / "whisper"), models.audio.params,
                                      {"dims": dataclasses.asdict(models.audio.config)})
    return vae, whisper


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def run_infer(args, jax_cache, cwd):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax_cache, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.join(ROOT, "infer.py"), f"--config={TINY}", "--noprogress", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_infer_py_runs_an_exported_student_with_lcm_at_its_steps(tmp_path, tiny_models, jax_cache):
    from lipsync_jax.distilled import student_info
    from lipsync_jax.media import probe_video

    student = export_tiny_student(tmp_path)
    assert student_info(student)["student_steps"] == STUDENT_STEPS
    vae, whisper = save_random_vae_and_whisper(tmp_path, tiny_models)
    output = str(tmp_path / "student.mp4")
    common = [f"--checkpoint={student}", f"--vae_checkpoint={vae}", f"--whisper_checkpoint={whisper}",
              f"--video={asset_path('demo1_video.mp4')}", f"--audio={asset_path('demo1_audio.wav')}",
              "--max_seconds=0.6"]
    proc = run_infer(common + [f"--output={output}"], jax_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"consistency student of random weights (test run): scheduler lcm, {STUDENT_STEPS} steps" in proc.stdout
    assert f"wrote {output}: 15 frames" in proc.stdout
    info = probe_video(output)
    assert info.num_frames == 15 and info.fps == 25.0

    refused = run_infer(common + [f"--output={tmp_path / 'refused.mp4'}", "--guidance=2"], jax_cache, tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {student}: guidance 2 is refused"), last
    assert not os.path.exists(tmp_path / "refused.mp4")


@pytest.mark.heavy  # over CI's time budget
@pytest.mark.slow
def test_lcm_chunks_do_not_depend_on_the_batch(tiny_models):
    """Each chunk draws its fresh lcm noise from its own key (its index): two chunks in one call
    equal the same chunks one per call."""
    from lipsync_jax.pipeline.program import ChunkProgram, data_mesh, replicate, start_noise

    mesh = data_mesh(jax.local_devices()[:1])
    params = replicate(tiny_models.unet_params, mesh), replicate(tiny_models.vae_params, mesh)
    options = dict(num_steps=2, guidance_scale=1.0, sampler_options={"solver": "lcm"})
    pair = ChunkProgram(tiny_models, mesh, chunks_per_device=2, **options)
    single = ChunkProgram(tiny_models, mesh, chunks_per_device=1, **options)
    shapes = pair.input_shapes()
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, shapes["faces"][0], dtype=np.uint8)
    audio = rng.standard_normal(shapes["audio"][0]).astype(np.float32)
    noise, key_data = start_noise(tiny_models, 5)
    both = np.asarray(pair(*params, faces, audio, np.array([3, 4], np.int32), noise, key_data))
    one_by_one = [np.asarray(single(*params, faces[i:i + 1], audio[i:i + 1], np.array([3 + i], np.int32), noise,
                                    key_data))[0] for i in range(2)]
    np.testing.assert_allclose(both[0], one_by_one[0], atol=2e-4)
    np.testing.assert_allclose(both[1], one_by_one[1], atol=2e-4)
