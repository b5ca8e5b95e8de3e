"""The ahead-of-time compile tool (lipsync_jax/aot, bench/aot.py): the targets table, the jaxpr
cost counter and roofline arithmetic (no plugin needed), and a deviceless XLA:GPU compile of the
tiny chunk program and stage-1 train step for the H100 target (heavy: needs requirements-aot.txt)."""

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax import accelerators, aot
from lipsync_jax.aot import devices as aot_devices
from lipsync_jax.aot.compile import CompileStats
from lipsync_jax.aot.cost import Cost, interpolate_branches, jaxpr_cost, roofline
from lipsync_jax.aot.footprint import ResultCache, cached_compile
from tests.helpers.paths import ROOT

GIB = 2 ** 30
REQUIRED = ("h100", "h200", "a100-40g", "l4", "tpu:v5e-1", "tpu:v6e-1", "tpu:v5p-8")


def _spec_field(text: str, name: str) -> float:
    match = re.search(rf"^\s*{name}: ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} missing"
    return float(match.group(1))


def test_targets_table_names_every_required_target_with_its_figures():
    for name in REQUIRED:
        assert name in aot.TARGETS
    consumer = sorted(round(t.memory_gib) for t in aot.TARGETS.values() if t.consumer)
    assert consumer == [8, 12, 24]  # a 24 GB, a 12 GB and an 8 GB consumer card
    for target in aot.TARGETS.values():
        assert target.memory_bytes > 4 * GIB and target.peak_bf16_flops > 1e13 and target.memory_bandwidth > 1e11
        assert target.source and target.platform in ("gpu", "tpu")
        if target.platform == "tpu":
            assert target.tpu_topology and target.spec_file is None
            continue
        text = target.spec_text()  # the GpuTargetConfigProto agrees with the table
        assert _spec_field(text, "device_memory_size") == target.memory_bytes
        assert abs(_spec_field(text, "memory_bandwidth") / target.memory_bandwidth - 1) < 0.01
        assert 'platform_name: "CUDA"' in text


def test_gpu_specs_are_package_data():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert '"lipsync_jax.accelerators" = ["gpu_specs/*.txtpb"]' in f.read()
    assert sorted(os.listdir(accelerators.SPEC_DIR)) == sorted(
        t.spec_file for t in aot.TARGETS.values() if t.spec_file)


def test_unknown_target_is_one_line_naming_the_known_ones():
    with pytest.raises(aot.UnknownTargetError) as info:
        aot.get_target("h800")
    assert "\n" not in str(info.value) and "rtx4060-8g" in str(info.value)
    assert [t.name for t in aot.parse_targets("h100, tpu:v5e-1")] == ["h100", "tpu:v5e-1"]
    assert len(aot.parse_targets("all")) == len(aot.TARGETS)


def test_missing_plugin_is_one_line_naming_requirements_aot(monkeypatch):
    monkeypatch.setattr(aot_devices, "_gpu_plugin_installed", lambda: False)
    monkeypatch.setattr(aot_devices, "_libtpu_installed", lambda: False)
    aot_devices._devices.cache_clear()
    for name in ("l4", "tpu:v6e-1"):
        with pytest.raises(aot.AOTUnavailableError) as info:
            aot.target_devices(name)
        assert "requirements-aot.txt" in str(info.value) and "\n" not in str(info.value)
    aot_devices._devices.cache_clear()


def test_roofline_takes_the_slower_bound():
    line = roofline(flops=1e12, bytes_accessed=1e9, items_per_call=16, peak_flops=1e14, bandwidth=1e12)
    assert line.seconds_compute == pytest.approx(0.01) and line.seconds_memory == pytest.approx(0.001)
    assert line.bound == "compute" and line.items_per_second == pytest.approx(1600)
    line = roofline(flops=1e9, bytes_accessed=1e11, items_per_call=16, peak_flops=1e14, bandwidth=1e12)
    assert line.bound == "memory" and line.seconds == pytest.approx(0.1) and line.items_per_second == pytest.approx(160)
    with pytest.raises(ValueError):
        roofline(1.0, 1.0, 1, 0.0, 1.0)


def test_cost_multiplies_scan_bodies_by_their_length():
    def loop(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=20)[0]
    x = jax.ShapeDtypeStruct((64, 128), jnp.float32)
    w = jax.ShapeDtypeStruct((128, 128), jnp.float32)
    cost = jaxpr_cost(jax.make_jaxpr(loop)(x, w))
    assert cost.flops == 20 * 2 * 64 * 128 * 128
    assert cost.bytes == 20 * 4 * (64 * 128 + 128 * 128 + 64 * 128)
    xla = jax.jit(loop).lower(x, w).cost_analysis()["flops"]  # XLA counts the body once
    assert xla == pytest.approx(cost.flops / 20, rel=0.01)


def test_cost_matches_xla_on_a_loop_free_program():
    def net(image, kernel, w):
        y = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.einsum("bhwc,cd->bhwd", jax.nn.relu(y), w)
    args = (jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32), jax.ShapeDtypeStruct((3, 3, 8, 32), jnp.float32),
            jax.ShapeDtypeStruct((32, 64), jnp.float32))
    cost = jaxpr_cost(jax.make_jaxpr(net)(*args))
    conv = 2 * (2 * 16 * 16 * 32) * (3 * 3 * 8)
    dot = 2 * (2 * 16 * 16 * 64) * 32
    assert cost.flops == pytest.approx(conv + dot, rel=0.01)
    assert cost.flops == pytest.approx(jax.jit(net).lower(*args).cost_analysis()["flops"], rel=0.05)


def test_cost_of_a_cond_keeps_both_branches_and_interpolates():
    def step(flag, x, w):
        return jax.lax.cond(flag, lambda v: (v @ w) @ w, lambda v: v @ w, x)
    args = (jax.ShapeDtypeStruct((), jnp.bool_), jax.ShapeDtypeStruct((32, 32), jnp.float32),
            jax.ShapeDtypeStruct((32, 32), jnp.float32))
    cost = jaxpr_cost(jax.make_jaxpr(step)(*args))
    one = 2 * 32 ** 3
    assert cost.flops == 2 * one and cost.flops_low == one
    assert interpolate_branches(cost, 1 / 3).flops == pytest.approx(one * 4 / 3)
    assert isinstance(cost + Cost(1.0, 2.0), Cost)


def test_cached_rows_do_not_compile_again(tmp_path):
    path = str(tmp_path / "rows.json")
    stats = CompileStats(target="h100", argument_bytes=1, output_bytes=2, temp_bytes=3, code_bytes=0, alias_bytes=0,
                         compile_seconds=5.0, flops=1e9, bytes_accessed=1e6, items_per_call=16,
                         roofline_compute_s=1e-3, roofline_memory_s=1e-4)
    ResultCache(path).put("row", {"stats": stats.as_dict()})

    def must_not_trace():
        raise AssertionError("a cached row was traced again")
    again = cached_compile(ResultCache(path), "row", must_not_trace, aot.get_target("h100"))
    assert again == stats and again.total_bytes == 6 and again.roofline_items_per_second == pytest.approx(16 / 1e-3)


def _cuda_plugin() -> None:
    # The ONE optional-plugin skip of this suite: the deviceless XLA:GPU compile needs JAX's CUDA
    # plugin, which is not a project dependency (requirements-aot.txt, ~5.5 GB with its CUDA wheels).
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        pytest.skip("JAX's CUDA plugin is not installed: pip install -r requirements-aot.txt")


@pytest.mark.heavy  # the plugin is ~5.5 GB (not in CI); two tiny programs compiled for the H100
def test_tiny_chunk_program_and_train_step_compile_for_h100_without_a_gpu():
    _cuda_plugin()
    from lipsync_jax.aot.programs import trace_chunk_program, trace_train_step
    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.pipeline.memory import tree_bytes
    from lipsync_jax.pipeline.models import abstract_models

    target = aot.get_target("h100")
    devices = aot.target_devices(target, 1)
    assert devices[0].platform == "gpu" and "H100" in devices[0].device_kind
    models = abstract_models(load_config(resolve_path("configs/unet/tiny.py")))
    traced, frames, _ = trace_chunk_program(target, models, chunk_batch=2)
    stats = aot.compile_traced(traced, target, frames)
    weights = tree_bytes(models.unet_params) + tree_bytes(models.vae_params)
    assert stats.argument_bytes >= weights and stats.temp_bytes > 0
    assert stats.output_bytes == 2 * 16 * 64 * 64 * 3 * 4  # two chunks of generated faces, float32
    assert stats.flops > 20 * 2 * 1e8 and stats.roofline_items_per_second > 0  # 20 UNet calls counted

    traced, frames, divisor = trace_train_step(target, "configs/unet/tiny_stage1.py", data=1)
    train = aot.compile_traced(traced, target, frames, cost_divisor=divisor)
    assert train.argument_bytes > 0 and train.temp_bytes > 0 and train.alias_bytes > 0  # donated state
    assert divisor == 1 and train.flops > 0


@pytest.mark.heavy
def test_footprint_for_a_target_has_the_planner_fields_and_is_cached(tmp_path):
    _cuda_plugin()
    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.pipeline.memory import Footprint
    from lipsync_jax.pipeline.models import abstract_models

    models = abstract_models(load_config(resolve_path("configs/unet/tiny.py")))
    first = aot.program_footprint_for("h100", models, chunk_batch=1, cache_dir=str(tmp_path))
    again = aot.program_footprint_for("h100", models, chunk_batch=1, cache_dir=str(tmp_path))
    assert first["compile_seconds"] > 0 and again["compile_seconds"] == 0.0 and first["estimate"] == "xla:h100"
    fields = {k: first[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes", "alias_bytes")}
    assert Footprint(**fields).total_bytes == Footprint(**{k: again[k] for k in fields}).total_bytes > 0
    assert np.isfinite(first["flops"]) and first["flops"] > 0


@pytest.mark.heavy  # one tiny chunk program and Whisper compiled for the H100
def test_plan_for_h100_is_the_xla_gpu_compile(tmp_path):
    _cuda_plugin()
    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.pipeline.job import RunOptions, Sampling
    from lipsync_jax.pipeline.memory import queued_bytes
    from lipsync_jax.pipeline.models import abstract_models
    from lipsync_jax.serving.plan import plan_run

    config = load_config(resolve_path("configs/unet/tiny.py"))
    lines = []
    plan, fsdp = plan_run(config, RunOptions(plan_for="h100", compile_cache=str(tmp_path)), Sampling(),
                          log=lines.append)
    assert fsdp == 1 and plan.target == "h100" and plan.footprint.estimate == "xla:h100"
    assert (plan.chunk_batch, plan.vae_frames, plan.whisper_on_host) == (2, 16, False)  # 79 GiB: the first choice
    assert plan.describe().endswith(f"of {aot.get_target('h100').memory_gib:.2f} GB "
                                    f"(XLA:GPU compile for h100, NVIDIA H100 SXM5 80 GB)")
    models = abstract_models(config)
    whisper = aot.whisper_footprint_for("h100", models, batch=models.audio.max_batch, cache_dir=str(tmp_path))
    assert whisper["compile_seconds"] == 0.0  # the plan compiled it: cached
    whisper_bytes = sum(whisper[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes"))
    assert plan.whisper_bytes == whisper_bytes - whisper["alias_bytes"] > whisper["argument_bytes"]
    assert plan.device_bytes == plan.footprint.total_bytes + plan.whisper_bytes + queued_bytes(models, 2, 2)
    assert len(lines) == 1 and lines[0].startswith("estimate: chunk_batch 2")


@pytest.mark.heavy  # needs the plugin (not in CI); three small attention programs compiled for the H100
def test_auto_attention_compiles_to_cudnn_for_h100_in_half_precision():
    """Traced under a mesh of H100 compile-only devices (as the train step is), "auto" attention
    and its gradients are cuDNN flash-attention kernels for heads of 40 in bf16, and XLA for heads
    of 160 (over cuDNN's 128) and in float32."""
    _cuda_plugin()
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lipsync_jax.aot.compile import TRITON_OFF
    from lipsync_jax.models.attention import dot_product_attention

    mesh = aot.target_mesh("h100", (1,), ("data",))

    def cudnn_calls(shape, dtype) -> int:
        x = jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))

        def loss(q, k, v):
            return jnp.sum(jnp.sin(dot_product_attention(q, k, v).astype(jnp.float32)))
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(x, x, x)
        text = traced.lower().compile(compiler_options=TRITON_OFF).as_text()
        return text.count('custom_call_target="__cudnn$fmha')

    assert cudnn_calls((2, 256, 8, 40), jnp.bfloat16) == 2  # forward and backward kernels
    assert cudnn_calls((2, 256, 8, 160), jnp.bfloat16) == 0
    assert cudnn_calls((2, 256, 8, 40), jnp.float32) == 0
