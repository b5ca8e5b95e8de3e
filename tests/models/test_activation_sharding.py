"""Activation sharding constraints of the UNet (``nn.with_logical_constraint`` on the batch axis of
video, spatial-token and temporal-token activations): present in the lowered program when traced
under a mesh + logical rules (``mesh.with_activation_sharding``, as the training loop does), cut
to the mesh axes that divide the batch, and absent without that context (inference)."""

import os
import subprocess
import sys

import pytest
from jax.sharding import AbstractMesh

from lipsync_jax import sharding as sharding_lib
from lipsync_jax.config_utils import PROJECT_ROOT

# Lowers (no compile) the tiny UNet on a (4, 2) data x fsdp mesh of 8 fake CPU devices; prints one
# line per program: its name and every sharding constraint as "mesh axes|tensor type".
LOWER_SCRIPT = r'''
import re
import jax, jax.numpy as jnp
from lipsync_jax.config_utils import config_to_dict, load_config, resolve_path
from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params, dummy_inputs
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax import sharding as sharding_lib

cfg = config_to_dict(load_config(resolve_path("configs/unet/tiny.py")))
unet = UNet3DConditionModel(UNet3DConfig.from_dict(cfg["model"]))
mesh = sharding_lib.make_mesh(dict(axes=("data", "fsdp"), shape=(4, 2)))
params = abstract_params(unet)

def loss(p, batch):
    return jnp.mean(unet.apply({"params": p}, batch["sample"], batch["timesteps"], batch["audio"]))

def batch_of(b):
    names = ("sample", "timesteps", "audio")
    inputs = dummy_inputs(unet.config, (b, 4, 8, 8, 13))
    return {n: jax.ShapeDtypeStruct(x.shape, x.dtype) for n, x in zip(names, inputs)}

programs = {
    "grad_b8": sharding_lib.with_activation_sharding(jax.grad(loss), mesh, sharding_lib.LOGICAL_RULES, 1),
    "fwd_b4": sharding_lib.with_activation_sharding(loss, mesh, sharding_lib.LOGICAL_RULES, 1),
    "plain_b8": loss,
}
for name, fn in programs.items():
    b = 4 if name.endswith("b4") else 8
    text = jax.jit(fn).lower(params, batch_of(b)).as_text()
    found = re.findall(r"sharding_constraint %\S+ <@\w+, \[([^\]]*)\]> : tensor<([^>]*)>", text)
    print(name, " ".join(f"{axes.replace(' ', '')}|{ty}" for axes, ty in found))
'''


def test_activation_rules_cut_the_batch_axes_to_what_divides_the_batch():
    mesh = AbstractMesh((4, 2), ("data", "fsdp"))
    by_batch = {b: dict(sharding_lib.activation_rules(sharding_lib.LOGICAL_RULES, mesh, b))["activation_batch"]
                for b in (8, 16, 4, 2)}
    assert by_batch == {8: ("data", "fsdp"), 16: ("data", "fsdp"), 4: ("data",), 2: None}
    rules = dict(sharding_lib.activation_rules(sharding_lib.LOGICAL_RULES, mesh, 8))
    assert rules["activation_frames"] is None and rules["activation_embed"] is None
    assert rules["embed_out"] == "fsdp"  # parameter rules untouched
    # a mesh without fsdp keeps only data; config rules given as lists become tuples
    assert dict(sharding_lib.activation_rules(sharding_lib.LOGICAL_RULES, AbstractMesh((8,), ("data",)), 8))[
        "activation_batch"] == ("data",)
    assert dict(sharding_lib.rules_from_config({"rules": [("activation_batch", ["data", "fsdp"])]})) == {
        "activation_batch": ("data", "fsdp")}


@pytest.mark.integration
def test_unet_activation_constraints_in_lowered_program_only_under_mesh_rules():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", LOWER_SCRIPT], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in proc.stdout.strip().splitlines())
    grad = lines["grad_b8"].split()
    fwd = lines["fwd_b4"].split()
    assert lines["plain_b8"] == ""  # no rules, no mesh: constraints are no-ops (inference, golden checks)
    assert len(grad) > 50 and len(fwd) > 20
    # batch 8 on (4, 2): every constrained activation split over data x fsdp, nothing else split
    assert all(c.startswith('{"data","fsdp"}') and c.split("|")[0].count('"') == 4 for c in grad), grad[:5]
    # batch 4: only data divides it (the same fallback as the input batch)
    assert all(c.startswith('{"data"}') and c.split("|")[0].count('"') == 2 for c in fwd), fwd[:5]
    types = {c.split("|")[1] for c in grad}
    # (b, f, h, w, c) video at full resolution after conv_in; spatial tokens (b*f, h*w, c) and their
    # audio (b*f, 50, 384); temporal tokens (b*h*w, f, c) of the motion modules
    assert "8x4x8x8x32xf32" in types
    assert "32x64x32xf32" in types and "32x50x384xf32" in types
    assert "512x4x32xf32" in types
    # the backward pass carries them too: more constraints than the forward program alone
    assert len(grad) > len(fwd)
