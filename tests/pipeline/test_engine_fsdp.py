"""The engine's (data, fsdp) mesh (lipsync_jax/pipeline/placement.py): weights split over fsdp give
the frames of one device.

One subprocess on 4 fake CPU devices (XLA_FLAGS): a (2, 2) mesh whose UNet AND VAE kernels are
split over fsdp (the VAE's size threshold set to 0 so both networks' sharded paths run), two
chunks fed to the engine's device program directly (synthetic faces and audio windows, one chunk
per data shard), against the same chunks on one device. The model is a one-level cut of the
tiny config (4 frames, 1 DDIM step with CFG) so the two compiles stay small; the parameter specs
are read back from the placed arrays. Also: a bad --fsdp is one clear error (engine and
infer.py), and the automatic choice grows fsdp only when the weights do not fit the budget (the
device's memory, or the --max_vram plan with a stand-in footprint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.engine import ROUNDOFF
from tests.helpers.paths import ROOT, TINY_CONFIG

pytestmark = pytest.mark.integration

SCRIPT = r"""
import json
import jax
import numpy as np
from lipsync_jax.config_utils import load_config
from lipsync_jax.pipeline import LipsyncEngine, RunOptions, Sampling, build_models
from lipsync_jax.pipeline.placement import WEIGHT_SHARE, MeshError, choose_fsdp, sharded_weight_bytes, weight_bytes
from lipsync_jax import sharding as sharding_lib

assert jax.device_count() == 4, jax.devices()
config = load_config({tiny!r})
config.model.update(dict(block_out_channels=(64,), down_block_types=("CrossAttnDownBlock3D",),
                         up_block_types=("CrossAttnUpBlock3D",), layers_per_block=1, motion_module_resolutions=(1,)))
config.vae.model.update(dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8))
config.data.num_frames = 4
models = build_models(config, random_init=True, seed=0)
report = {{}}

try:
    LipsyncEngine(models, RunOptions(fsdp=3))
except MeshError as error:
    report["error"] = str(error)

per_device = {{f: sharded_weight_bytes(models, f, 4) for f in (1, 2, 4)}}
report["bytes"] = [weight_bytes(models), per_device[1], per_device[2], per_device[4]]
budget = lambda f: int(per_device[f] / WEIGHT_SHARE)  # the smallest budget that fsdp f fits
report["auto"] = [choose_fsdp(models, None, 4), choose_fsdp(models, budget(1), 4),
                  choose_fsdp(models, budget(1) - 1, 4), choose_fsdp(models, budget(2), 4),
                  choose_fsdp(models, budget(2) - 1, 4)]

# --max_vram with an automatic fsdp: a stand-in footprint (no compile) whose budget only fsdp 2 fits
from lipsync_jax.pipeline import memory
temp = 1 << 20
memory.program_footprint = lambda m, **kw: memory.Footprint(argument_bytes=per_device[1], output_bytes=0,
                                                             temp_bytes=temp)
memory.whisper_footprint = lambda m, windows, **kw: memory.Footprint(argument_bytes=1 << 20, output_bytes=0,
                                                                     temp_bytes=windows << 20)
need = per_device[2] + temp + memory.queued_bytes(models, 1, 2)  # Whisper on the host
planned = LipsyncEngine(models, RunOptions(chunk_batch=1, max_vram_gb=(need + 1024) / memory.GB))
report["planned"] = [planned.fsdp, dict(planned.mesh.shape), planned.memory_plan.device_bytes == need,
                     planned.memory_plan.whisper_on_host]
try:
    LipsyncEngine(models, RunOptions(chunk_batch=1, fsdp=2, max_vram_gb=(need - 1024) / memory.GB))
except memory.MemoryBudgetError as error:
    report["too_small"] = str(error).split(":")[0]

sharding_lib.FROZEN_SHARD_MIN_MIB = 0.0  # split the (tiny) VAE too
engine = LipsyncEngine(models, RunOptions(chunk_batch=1, fsdp=2))
report["mesh"] = dict(engine.mesh.shape)
report["batch"] = engine.batch

def biggest(tree):
    x = max(jax.tree.leaves(tree), key=lambda a: a.size)
    return [list(x.shape), [a if a is None else str(a) for a in x.sharding.spec],
            list(x.addressable_shards[0].data.shape)]

report["unet"], report["vae"] = biggest(engine.unet_params), biggest(engine.vae_params)
vectors = [x for x in jax.tree.leaves(engine.unet_params) if x.ndim == 1]
report["vectors_replicated"] = all(x.sharding.is_fully_replicated for x in vectors)
split = [x for x in jax.tree.leaves(engine.unet_params) if not x.sharding.is_fully_replicated]
report["unet_split_fraction"] = sum(x.size for x in split) / sum(x.size for x in jax.tree.leaves(engine.unet_params))

one_step = Sampling(steps=1, guidance=1.5)
shapes = engine.program(one_step).input_shapes()
rng = np.random.default_rng(0)
faces = rng.integers(0, 256, shapes["faces"][0], dtype=np.uint8)
audio = rng.standard_normal(shapes["audio"][0]).astype(np.float32)
chunks = np.array([3, 7], np.int32)
split_out = np.asarray(engine.generate(faces, audio, chunks, seed=11, sampling=one_step))
one = LipsyncEngine(models, RunOptions(chunk_batch=2, devices=1))
one_out = np.asarray(one.generate(faces, audio, chunks, seed=11, sampling=one_step))
report["shape"] = list(split_out.shape)
report["diff"] = float(np.abs(split_out - one_out).max())
report["spread"] = float(np.abs(one_out[0] - one_out[1]).max())
print(json.dumps(report))
"""


def test_fsdp_sharded_weights_give_the_frames_of_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tiny=TINY_CONFIG)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["error"] == "--fsdp 3 must divide the number of local devices (4): choose one of 1, 2, 4"
    assert report["mesh"] == {"data": 2, "fsdp": 2} and report["batch"] == 2  # fsdp groups share chunks
    for name in ("unet", "vae"):  # the largest kernel of each network is really split over fsdp
        shape, spec, local = report[name]
        assert spec[-1] == "fsdp" and local == shape[:-1] + [shape[-1] // 2], (name, report[name])
    assert report["vectors_replicated"] and report["unet_split_fraction"] > 0.9
    total, one, half, quarter = report["bytes"]  # what one device holds (the tiny VAE stays whole here)
    assert one == total and quarter < half < 0.65 * total
    assert report["auto"] == [1, 1, 2, 2, 4]  # no budget / the weights' share fits / does not: the next fsdp
    assert report["planned"] == [2, {"data": 2, "fsdp": 2}, True, True]  # fsdp 1 does not fit --max_vram, 2 does
    assert report["too_small"].startswith("--max_vram") and report["too_small"].endswith("is too small")
    assert report["shape"] == [2, 4, 64, 64, 3] and report["spread"] > 0.1  # two different chunks
    assert report["diff"] < ROUNDOFF, report


def test_infer_rejects_an_fsdp_that_does_not_divide_the_devices(tmp_path):
    from tests.helpers.paths import asset_path

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.join(ROOT, "infer.py"), f"--config={TINY_CONFIG}", "--random_init", "--fsdp=2",
           f"--video={asset_path('demo2_video.mp4')}", f"--audio={asset_path('demo2_audio.wav')}",
           f"--output={tmp_path / 'out.mp4'}", "--nocompile_cache"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("error: --fsdp 2 must divide the number of local devices (1): "
                                                    "choose one of 1")
    assert os.listdir(tmp_path) == []
