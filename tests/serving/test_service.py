"""The one front door (lipsync_jax/serving/service.py) and the doors in front of it.

- Every door's flags (infer.py, the batch CLI, the web app, the live server) reach the same
  ``RunOptions``, and the service passes the memory budget (``--max_vram``, else the config's
  ``run.max_vram_gb``) to the planner: the engine's memory plan is made, logged and returned by
  ``stats()`` (a stand-in footprint replaces the compile).
- A bad value gets the same one-line message from the flags, a CSV row, the web form and the live
  protocol; the web app's limits bound what a client can make the server compile.
- Slow: ``app.py --max_vram 8`` starts and reports the planned setting in its log and ``/stats``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from absl import flags

from lipsync_jax.pipeline import JobDefaults, OptionError, RunOptions, memory
from lipsync_jax.pipeline.memory import Footprint
from lipsync_jax.serving import flags as shared
from tests.helpers.net import free_port
from tests.helpers.paths import ROOT, TINY_CONFIG

MB = 1024 ** 2


def door_flags(door: str, argv: list[str]) -> flags.FlagValues:
    """A door's own flag definitions parsed from ``argv`` into a fresh FlagValues."""
    from lipsync_jax.serving import batch, infer_cli, live_server, webapp

    fv = flags.FlagValues()
    {"infer": infer_cli.define_flags, "batch": batch.define_flags, "app": webapp.define_flags,
     "live": live_server.define_flags}[door](fv)
    fv([door, f"--config={TINY_CONFIG}", *argv])
    return fv


@pytest.mark.parametrize("door", ["infer", "batch", "app", "live"])
def test_every_door_parses_the_run_options_the_same_way(door):
    fv = door_flags(door, ["--max_vram=8", "--chunk_batch=2", "--nocompile_cache"])
    _, defaults = shared.config_and_defaults(fv)
    assert shared.run_options(fv, defaults) == RunOptions(max_vram_gb=8.0, chunk_batch=2, compile_cache="")
    bad = door_flags(door, ["--max_vram=lots"])
    with pytest.raises(OptionError, match="max_vram 'lots': must be a finite number >= 0"):
        shared.run_options(bad, defaults)


@pytest.fixture
def stand_in_footprint(monkeypatch):
    """The planner's compile replaced by 100 MB of weights + 40 MB per chunk."""
    calls = []

    def footprint(models, *, chunk_batch, **kw):
        calls.append(chunk_batch)
        return Footprint(argument_bytes=100 * MB, output_bytes=MB, temp_bytes=40 * MB * chunk_batch)

    monkeypatch.setattr(memory, "program_footprint", footprint)
    monkeypatch.setattr(memory, "whisper_footprint", lambda models, windows, **kw: Footprint(MB, MB, 8 * MB * windows))
    return calls


@pytest.mark.integration
@pytest.mark.parametrize("where", ["flag", "config"])
def test_the_service_passes_the_budget_to_the_planner(where, tiny_models, stand_in_footprint):
    from lipsync_jax.serving.service import LipsyncService

    lines = []
    run = RunOptions(max_vram_gb=0.5, chunk_batch=2) if where == "flag" else RunOptions(chunk_batch=2)
    defaults = JobDefaults(max_vram_gb=None if where == "flag" else 0.5)
    service = LipsyncService(tiny_models, defaults, run, log=lines.append)
    plan = service.engine.memory_plan
    assert plan is not None and stand_in_footprint  # the planner ran (before: the budget never reached it)
    assert plan.budget_bytes == int(0.5 * 1024 ** 3) and plan.chunk_batch == 2
    assert any(line.startswith("memory plan: chunk_batch 2") for line in lines)
    stats = service.stats()
    assert stats["memory_plan"]["budget_gb"] == 0.5 and stats["memory_plan"]["chunk_batch"] == 2
    assert "memory plan" in service.describe()
    service.close()


@pytest.mark.integration
def test_without_a_budget_there_is_no_plan(tiny_models, stand_in_footprint):
    from lipsync_jax.serving.service import LipsyncService

    service = LipsyncService(tiny_models, JobDefaults(), RunOptions())
    assert service.engine.memory_plan is None and not stand_in_footprint and service.stats()["memory_plan"] is None
    service.close()


BAD_VALUES = [("steps", "0", "steps 0: must be a whole number >= 1"),
              ("guidance", "nan", "guidance nan: must be a finite number >= 0"),
              ("seed", str(2 ** 70), f"seed {2 ** 70}: must be a whole number in 0..4294967295"),
              ("max_seconds", "-1", "max_seconds -1: must be a finite number >= 0.04"),
              ("overlap", "16", "overlap 16: must be a whole number in 0..15")]


@pytest.mark.parametrize("field, value, message", BAD_VALUES)
def test_a_bad_value_gets_the_same_line_from_every_door(field, value, message, tmp_path):
    from lipsync_jax.pipeline.job import parse_request, parse_seed
    from lipsync_jax.serving.batch import BatchFileError, parse_rows, read_jobs

    defaults = JobDefaults()
    flag = {"overlap": "overlap"}.get(field, field)
    fv = door_flags("infer", [f"--{flag}={value}"])  # infer.py / the batch CLI's command line
    with pytest.raises(OptionError) as from_flags:
        parse_request("v.mp4", "a.wav", "o.mp4", {**shared.job_values(fv), **shared.sampling_values(fv)}, defaults)
    jobs = tmp_path / "jobs.csv"  # a batch row
    jobs.write_text(f"video,audio,output,{field}\nv.mp4,a.wav,o.mp4,{value}\n")
    with pytest.raises(BatchFileError) as from_csv:
        parse_rows(str(jobs), read_jobs(str(jobs)), defaults)
    form_value = float(value) if field in ("guidance", "max_seconds") else value  # the web form sends numbers
    with pytest.raises(OptionError) as from_form:
        parse_request("v.mp4", "a.wav", "o.mp4", {field: form_value}, defaults)
    assert str(from_flags.value) == message
    assert str(from_csv.value) == f"{jobs} line 2: {message}"
    assert str(from_form.value) == message
    if field == "seed":  # the live protocol's start message
        with pytest.raises(OptionError, match="must be a whole number in 0..4294967295"):
            parse_seed(2 ** 70)


def test_web_limits_bound_what_a_client_can_compile():
    from lipsync_jax.pipeline.job import parse_request
    from lipsync_jax.serving.webapp import web_limits

    limits = web_limits(max_seconds=2.0)
    ok = limits.check(parse_request("v.mp4", "a.wav", "o.mp4", {"guidance": 1.5, "steps": 20}, JobDefaults()))
    assert ok.job.max_seconds == 2.0  # cut to the server's longest audio
    for values, message in [({"guidance": 1.55}, "guidance 1.55: use at most 1 decimals"),
                            ({"guidance": 7.0}, "guidance 7: must be a finite number in 1..3"),
                            ({"steps": 500}, "steps 500: must be a whole number in 1..50"),
                            ({"deepcache_interval": 9}, "deepcache_interval 9: must be a whole number in 0..5")]:
        request = parse_request("v.mp4", "a.wav", "o.mp4", values, JobDefaults())
        with pytest.raises(OptionError) as error:
            limits.check(request)
        assert str(error.value).startswith(message), (values, str(error.value))


@pytest.mark.slow  # the planner compiles the tiny program once for its estimate
def test_app_with_max_vram_reports_the_planned_setting(tmp_path):
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    env = dict(os.environ, JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), f"--config={TINY_CONFIG}", "--random_init",
                             "--max_vram=8", "--host=127.0.0.1", f"--port={port}",
                             f"--compile_cache={tmp_path / 'xla'}"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                    break
            except OSError:
                assert time.time() < deadline, (tmp_path / "app.log").read_text()[-3000:]
                time.sleep(1.0)
        from gradio_client import Client

        stats = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/stats")
        stats = stats if isinstance(stats, dict) else json.loads(stats)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    text = (tmp_path / "app.log").read_text()
    assert "memory plan: chunk_batch 1" in text and "of 8.00 GB" in text, text[-3000:]
    assert stats["memory_plan"]["budget_gb"] == 8.0 and stats["memory_plan"]["chunk_batch"] == 1
