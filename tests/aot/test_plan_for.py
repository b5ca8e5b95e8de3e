"""--plan_for TARGET / --plan_only: the memory plan for an accelerator that is not here, parsed like
every run option, made from the target's footprint functions (stand-ins here: no compiler
needed), the CPU-modelled fallback named in the plan, printed by every door without running.
The real XLA:GPU plan is in tests/aot/test_aot.py (heavy)."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
from absl import flags

from lipsync_jax.accelerators import GIB, TARGETS, get_target
from lipsync_jax.aot import devices as aot_devices
from lipsync_jax.aot import planning
from lipsync_jax.config_utils import load_config
from lipsync_jax.pipeline import memory
from lipsync_jax.pipeline.engine import LipsyncEngine
from lipsync_jax.pipeline.job import JobDefaults, OptionError, RunOptions, Sampling, parse_run
from lipsync_jax.pipeline.memory import Footprint, plan_memory, queued_bytes
from lipsync_jax.pipeline.models import abstract_models
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.plan import plan_run, print_plan
from tests.helpers.paths import ROOT, TINY_CONFIG

MB = 1024 ** 2


@pytest.fixture(scope="module")
def config():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="module")
def tiny(config):
    return abstract_models(config, jnp.bfloat16)


def program_parts(models, *, chunk_batch, vae_frames=None, **_):
    """A stand-in compile for a target: 1 GiB of weights, 2 GiB per chunk, 128 MB per VAE frame."""
    return dict(argument_bytes=GIB, output_bytes=MB, temp_bytes=chunk_batch * (2 * GIB + 128 * MB * (vae_frames or 16)),
                code_bytes=0, alias_bytes=0, compile_seconds=0.0, estimate="xla:stand-in", flops=1.0,
                bytes_accessed=1.0)


def whisper_parts(models, *, batch, **_):
    return dict(argument_bytes=30 * MB, output_bytes=90 * MB, temp_bytes=110 * MB * batch, code_bytes=0,
                alias_bytes=0, compile_seconds=0.0, estimate="xla:stand-in", flops=1.0, bytes_accessed=1.0)


@pytest.fixture
def target_compiler(monkeypatch):
    """The target's compiler "installed", its compiles replaced by the stand-ins above (calls recorded)."""
    calls = []

    def program(target, models, **kw):
        calls.append(("program", target.name, kw["chunk_batch"], kw["vae_frames"], kw["attention_backend"],
                      jnp.dtype(models.dtype).name))
        return program_parts(models, **kw)

    def whisper(target, models, **kw):
        calls.append(("whisper", target.name, kw["batch"]))
        return whisper_parts(models, **kw)

    monkeypatch.setattr(planning, "target_devices", lambda target, count: [object()] * count)
    monkeypatch.setattr(planning, "program_footprint_for", program)
    monkeypatch.setattr(planning, "whisper_footprint_for", whisper)
    return calls


# ------------------------------------------------------------------------------ parsing
def test_plan_for_is_parsed_like_every_run_option():
    assert parse_run({"plan_for": " RTX4060-8G "}).plan_for == "rtx4060-8g"
    assert parse_run({"plan_for": "tpu:v5e-1"}).plans_only and not parse_run({}).plans_only
    assert parse_run({"plan_only": True}).plans_only and parse_run({"plan_for": ""}).plan_for is None
    with pytest.raises(OptionError) as error:
        parse_run({"plan_for": "h800"})
    message = str(error.value)
    assert message.startswith("plan_for 'h800': choose one of ") and "\n" not in message
    assert all(name in message for name in TARGETS)
    with pytest.raises(OptionError, match="plan_only 'yes'"):
        RunOptions(plan_only="yes")


@pytest.mark.integration
@pytest.mark.parametrize("door", ["infer_cli", "batch", "webapp", "live_server"])
def test_every_door_has_the_flags_and_the_same_one_line_error(door):
    import importlib

    module = importlib.import_module(f"lipsync_jax.serving.{door}")
    fv = flags.FlagValues()
    module.define_flags(fv)
    fv(["prog", "--plan_for", "rtx4060-8g", "--plan_only"])
    run = shared.run_options(fv, JobDefaults())
    assert run.plan_for == "rtx4060-8g" and run.plan_only
    fv = flags.FlagValues()
    module.define_flags(fv)
    fv(["prog", "--plan_for", "h800"])
    with pytest.raises(OptionError, match=r"^plan_for 'h800': choose one of h100, "):
        shared.run_options(fv, JobDefaults())


@pytest.mark.integration
def test_nothing_runs_with_options_that_only_plan(tiny):
    for run in (RunOptions(plan_only=True), RunOptions(plan_for="h100")):
        with pytest.raises(OptionError, match="nothing runs with it"):
            LipsyncEngine(tiny, run)


@pytest.mark.integration
def test_infer_prints_a_one_line_error_for_an_unknown_target(tmp_path):
    out = subprocess.run([sys.executable, "infer.py", "--config", TINY_CONFIG, "--plan_for", "rtx5090"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"error: plan_for 'rtx5090': choose one of {', '.join(TARGETS)}"]


# ------------------------------------------------------------------------------ the plan for a target
def test_the_planner_for_a_target_uses_its_footprint_functions(tiny, target_compiler):
    calls = target_compiler
    source = planning.target_footprints("rtx4060-8g")
    assert source.platform == "gpu" and source.target == "rtx4060-8g"
    plan = plan_memory(tiny, 8.5, chunk_batch=2, footprints=source)
    # 2 chunks: 1 GiB + 2 x (2 GiB + 2 GiB of VAE) = 9 GiB (+ Whisper's 0.98) > 8.5; VAE slices of 8: 7 + 0.98
    assert (plan.chunk_batch, plan.vae_frames, plan.attention_backend, plan.whisper_on_host) == (2, 8, "auto", False)
    assert {c[1] for c in calls} == {"rtx4060-8g"}
    assert ("whisper", "rtx4060-8g", tiny.audio.max_batch) in calls  # Whisper's working set, an offline job's batch
    whisper = Footprint(30 * MB, 90 * MB, 110 * MB * tiny.audio.max_batch).total_bytes
    program = Footprint(**{k: v for k, v in program_parts(tiny, chunk_batch=2, vae_frames=8).items()
                           if k in ("argument_bytes", "output_bytes", "temp_bytes")}).total_bytes
    assert plan.whisper_bytes == whisper and plan.device_bytes == program + whisper + queued_bytes(tiny, 2, 2)
    assert plan.describe().startswith("memory plan for rtx4060-8g: chunk_batch 2, VAE slices of 8 frames")
    assert plan.describe().endswith("(XLA:GPU compile for rtx4060-8g, NVIDIA GeForce RTX 4060 8 GB)")


@pytest.mark.integration
def test_plan_run_takes_the_targets_platform_memory_and_bfloat16(config, target_compiler):
    calls = target_compiler
    plan, fsdp = plan_run(config, RunOptions(plan_for="l4"), Sampling())
    assert fsdp == 1 and plan.budget_bytes == get_target("l4").memory_bytes  # --max_vram: the card's 24 GiB
    program_calls = [c for c in calls if c[0] == "program"]
    assert program_calls[0][2:] == (2, 16, "auto", "bfloat16")  # the GPU default chunk_batch, the first choice
    assert (plan.chunk_batch, plan.vae_frames) == (2, 16)
    calls.clear()
    plan, _ = plan_run(config, RunOptions(plan_for="l4", max_vram_gb=5, chunk_batch=1), Sampling(),
                       whisper_windows=1)
    assert plan.budget_bytes == 5 * GIB and plan.chunk_batch == 1 and ("whisper", "l4", 1) in calls
    with pytest.raises(OptionError, match="devices 9: h100 has 8 chip"):
        plan_run(config, RunOptions(plan_for="h100", devices=9), Sampling())


@pytest.mark.integration
def test_without_the_compiler_the_plan_says_it_is_the_cpu_model(config, monkeypatch):
    monkeypatch.setattr(aot_devices, "_gpu_plugin_installed", lambda: False)
    aot_devices._devices.cache_clear()
    seen = []

    def cpu_program(models, *, device, estimate, chunk_batch, **_):
        seen.append((device.platform, estimate))
        return Footprint(argument_bytes=GIB, output_bytes=0, temp_bytes=chunk_batch * GIB, estimate="native_bf16")

    monkeypatch.setattr(memory, "program_footprint", cpu_program)
    monkeypatch.setattr(memory, "whisper_footprint", lambda models, windows, **_: Footprint(GIB // 4, 0, 0))
    lines = []
    try:
        assert print_plan(config, RunOptions(plan_for="rtx4060-8g", max_vram_gb=8), Sampling(), out=lines.append) == 0
    finally:
        aot_devices._devices.cache_clear()
    assert seen and set(seen) == {("cpu", "native_bf16")}
    assert lines[0].startswith("planning for rtx4060-8g (NVIDIA GeForce RTX 4060 8 GB)")
    plan_line = lines[-1]
    assert plan_line.startswith("memory plan for rtx4060-8g: chunk_batch 2, VAE slices of 16 frames")
    assert ("(CPU compile modelling a native-bf16 device: JAX's CUDA plugin is not installed, so no XLA:GPU "
            "compile (pip install -r requirements-aot.txt))") in plan_line


@pytest.mark.slow  # the tiny program compiled on CPU
def test_infer_plan_for_prints_the_setting_and_runs_nothing(tmp_path):
    """infer.py --plan_for rtx4060-8g --max_vram 8 on this CPU: the plan, no video needed, no output."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "infer.py", "--config", TINY_CONFIG, "--plan_for", "rtx4060-8g", "--max_vram", "8",
           "--compile_cache", str(tmp_path / "cache"), "--output", str(tmp_path / "out.mp4")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    assert out.returncode == 0, out.stderr
    plan_line = out.stdout.strip().splitlines()[-1]
    assert plan_line.startswith("memory plan for rtx4060-8g: chunk_batch 2, VAE slices of 16 frames, attention auto")
    assert "of 8.00 GB (" in plan_line
    import importlib.util

    assert ("XLA:GPU compile for rtx4060-8g" if importlib.util.find_spec("jax_plugins") else
            "CPU compile modelling a native-bf16 device") in plan_line
    assert not (tmp_path / "out.mp4").exists()
    cached = {"memory_estimates.json", "aot_estimates.json"} & set(os.listdir(tmp_path / "cache"))
    assert cached  # the estimates are kept beside the compile cache
