"""Compiled per-device memory of the stage-2 train step, without the accelerator: XLA's
``memory_analysis()`` of the step compiled ahead of time for a TPU topology (libtpu compiles for a
described slice on a CPU-only host), for the NVIDIA GPUs of lipsync_jax/accelerators' target table
(JAX's CUDA plugin compiles for them on a CPU-only host; lipsync_jax/aot), or for fake CPU devices.

    # TPU v5p, 8 chips as (data, fsdp) = (8, 1); needs libtpu (jax's "tpu" extra, libtpu 0.0.42.*)
    TPU_ACCELERATOR_TYPE=v5p-8 python bench/compiled_memory.py --target tpu:v5p:2x2x2 --mesh 8,1
    # only the UNet's forward + backward (MSE on the noise), the part that holds the activations
    TPU_ACCELERATOR_TYPE=v5p-8 python bench/compiled_memory.py --target tpu:v5p:2x2x2 --mesh 8,1 --piece unet
    # 8 x H100 (JAX's CUDA plugin: pip install -r requirements-aot.txt); any GPU name of bench/aot.py
    python bench/compiled_memory.py --target gpu:h100 --mesh 8,1 --piece up_block
    # the whole step on one H100 (= per GPU under data parallelism), 3 clips, fused attention
    python bench/compiled_memory.py --target gpu:h100 --mesh 1,1 --batch 3
    # the UNet's and VideoMAE's attention on XLA instead of the default (cuDNN / Pallas flash attention)
    ... --attention_backend xla
    # the distillation step (a config with a ``distill`` section), 8 x H100 as FSDP pairs
    python bench/compiled_memory.py --target gpu:h100 --mesh 4,2 --config configs/unet/distill.py:512
    # fake CPU devices (XLA's CPU pipeline drops remat: temporaries are NOT a GPU/TPU prediction)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/compiled_memory.py --target cpu --mesh 4,2

The step is the one ``train.py`` jits (the task's ``train_step``: stage 1/2's ``UNetTrainer``, or the
distill task's for a config with a ``distill`` section, e.g. configs/unet/distill.py:512; traced
under the mesh and the logical rules, ``mesh.with_activation_sharding``), with the state, frozen networks and batch
sharded as the training loop shards them; one clip per data-parallel rank unless ``--batch``.
Nothing is allocated: arguments are ``jax.ShapeDtypeStruct`` s. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's lipsync_jax
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scaling_estimate import abstract_batch  # noqa: E402

from lipsync_jax import sharding as sharding_lib  # noqa: E402
from lipsync_jax.aot.compile import TRITON_OFF  # noqa: E402
from lipsync_jax.config_utils import load_config, resolve_path  # noqa: E402
from lipsync_jax.train.state import TrainState, make_optimizer  # noqa: E402
from lipsync_jax.train.tasks import build_task  # noqa: E402

GIB = 2 ** 30


def target_devices(target: str, count: int = 1) -> list:
    if target == "cpu":
        return list(jax.devices())
    platform, _, topology = target.partition(":")
    if platform not in ("tpu", "gpu") or not topology:
        raise SystemExit(f"--target {target!r}: expected 'cpu', 'tpu:<topology>' (e.g. tpu:v5p:2x2x2) or "
                         "'gpu:<name>' (e.g. gpu:h100)")
    if platform == "gpu":
        return _gpu_devices(topology, count)
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except RuntimeError as error:  # no libtpu: see docs/scaling.md for the install line
        raise SystemExit(f"--target {target}: {error} (pip install 'libtpu==0.0.42.*' and set "
                         "TPU_ACCELERATOR_TYPE, see docs/scaling.md)") from None


def _gpu_devices(name: str, count: int) -> list:
    """``count`` compile-only GPUs of the target ``name`` of lipsync_jax/accelerators (e.g. h100)."""
    from lipsync_jax import aot
    from lipsync_jax.accelerators import UnknownTargetError

    try:
        target = aot.get_target(name)
        if target.platform != "gpu":
            raise SystemExit(f"--target gpu:{name}: {name} is not a GPU target")
        return aot.target_devices(target, min(count, target.chips))
    except (UnknownTargetError, aot.AOTUnavailableError) as error:
        raise SystemExit(f"--target gpu:{name}: {error}") from None


def _with(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def compile_step(config, mesh: Mesh, per_device_batch: int, piece: str, attention_backend: str | None = None):
    task = build_task(config)  # stage 1/2, or the distill task (a config with a ``distill`` section)
    step_trainer = task.train_step.__self__
    trainer = getattr(step_trainer, "base", step_trainer)  # the distill trainer keeps stage 2's as ``base``
    if attention_backend:  # the UNet's and TREPA's VideoMAE's (frozen dataclasses: swap their models)
        object.__setattr__(trainer, "unet", trainer.unet.clone(attention_backend=attention_backend))
        if trainer.trepa is not None:
            videomae = trainer.trepa.model.clone(attention_backend=attention_backend)
            object.__setattr__(trainer, "trepa", dataclasses.replace(trainer.trepa, model=videomae))
    rules = sharding_lib.rules_from_config(config.mesh)
    tx, _ = make_optimizer(config.optimizer, 1000, 1, task.trainable)
    boxed = sharding_lib.box_params(task.param_shapes, task.logical_specs)
    create = lambda p: TrainState.create(p, tx, jax.random.key(0), ema_decay=task.ema_decay)  # noqa: E731
    state_sh = sharding_lib.state_shardings(jax.eval_shape(create, boxed), mesh, rules)
    state = _with(jax.eval_shape(create, task.param_shapes), state_sh)
    global_batch = per_device_batch * math.prod(mesh.shape[a] for a in sharding_lib.batch_axes(
        mesh, per_device_batch * mesh.devices.size))
    batch_sh = sharding_lib.batch_sharding(mesh, global_batch)
    batch = {k: jax.ShapeDtypeStruct((global_batch,) + v.shape[1:], v.dtype, sharding=batch_sh)
             for k, v in abstract_batch(config).items()}
    rep = NamedSharding(mesh, P())
    if piece == "unet":
        return _compile_unet(trainer, task.trainable, state, batch, mesh, rules, rep)
    if piece == "up_block":
        return _compile_last_up_block(trainer, batch, mesh, rules, rep)
    if piece == "vae_decode":
        return _compile_vae_decode(trainer, task, batch, mesh, rules, rep, config)
    frozen_abs = jax.eval_shape(task.init_frozen, jax.random.key(0))
    if task.name == "distill" and "teacher" not in frozen_abs:  # a configured teacher is loaded, not initialised
        frozen_abs = dict(frozen_abs, teacher=task.param_shapes)  # the student's tree
    min_mib = float(config.mesh.get("frozen_shard_min_mib", sharding_lib.FROZEN_SHARD_MIN_MIB))
    frozen = _with(frozen_abs, sharding_lib.frozen_shardings(frozen_abs, mesh, rules, min_mib))
    step = jax.jit(sharding_lib.with_activation_sharding(task.train_step, mesh, rules, batch_argnum=2),
                   out_shardings=(state_sh, rep), donate_argnums=(0,))
    return step.lower(state, frozen, batch), global_batch


def _compile_unet(trainer, trainable, state, batch, mesh, rules, rep):
    """value_and_grad of MSE(UNet(13-channel latents), noise) w.r.t. the trainable parameters."""
    b, f, s = batch["gt_frames"].shape[:3]
    lat = s // 8
    sh = batch["gt_frames"].sharding
    x = jax.ShapeDtypeStruct((b, f, lat, lat, 13), jnp.float32, sharding=sh)
    noise = jax.ShapeDtypeStruct((b, f, lat, lat, 4), jnp.float32, sharding=sh)
    timesteps = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=NamedSharding(mesh, P(sh.spec[0])))
    leaves, treedef = jax.tree.flatten(state.params)
    mask = jax.tree.leaves(trainable) if trainable is not None else [True] * len(leaves)
    train = [x_ for x_, m in zip(leaves, mask) if m]
    fixed = [x_ for x_, m in zip(leaves, mask) if not m]

    def loss(train_p, fixed_p, inputs):
        it_t, it_f = iter(train_p), iter(fixed_p)
        params = jax.tree.unflatten(treedef, [next(it_t) if m else next(it_f) for m in mask])
        pred = trainer.unet.apply({"params": params}, inputs["x"], inputs["t"], inputs["audio"])
        return jnp.mean(jnp.square(pred - inputs["noise"]))
    fn = sharding_lib.with_activation_sharding(jax.value_and_grad(loss), mesh, rules, batch_argnum=2)
    inputs = dict(x=x, t=timesteps, audio=batch["audio_embeds"], noise=noise)
    return jax.jit(fn, out_shardings=(rep, [t.sharding for t in train])).lower(train, fixed, inputs), b


def _compile_last_up_block(trainer, batch, mesh, rules, rep):
    """value_and_grad (w.r.t. its parameters and inputs) of the UNet's largest stage, the last up
    block (three layers of resnet + spatial transformer + motion module at the full latent size,
    then no upsampling), run WITHOUT remat: under the UNet's per-stage remat this is the working
    set of that stage's recompute + backward, the transient peak on top of the saved residuals."""
    from lipsync_jax.models.unet_blocks import UpBlock3D

    unet = trainer.unet
    cfg = unet.config
    n = len(cfg.block_out_channels)
    c0, c1 = cfg.block_out_channels[0], cfg.block_out_channels[1]
    block = UpBlock3D(config=cfg, out_channels=c0, heads=cfg.attention_head_dim[0],
                      has_cross_attention=cfg.up_block_types[n - 1].startswith("CrossAttn"),
                      has_motion=cfg.up_has_motion(n - 1), num_layers=cfg.layers_per_block + 1, add_upsample=False,
                      attention_backend=unet.attention_backend, dtype=unet.dtype, param_dtype=unet.param_dtype)
    b, f, s = batch["gt_frames"].shape[:3]
    lat = s // 8
    sh = batch["gt_frames"].sharding
    video = lambda c, dtype=unet.dtype: jax.ShapeDtypeStruct((b, f, lat, lat, c), dtype, sharding=sh)  # noqa: E731
    h = video(c1)
    skips = tuple(video(c0) for _ in range(cfg.layers_per_block + 1))
    temb = jax.ShapeDtypeStruct((b, cfg.time_embed_dim), unet.dtype, sharding=NamedSharding(mesh, P(sh.spec[0])))
    audio = jax.ShapeDtypeStruct(batch["audio_embeds"].shape, unet.dtype, sharding=batch["audio_embeds"].sharding)
    params = jax.eval_shape(lambda *a: nn_unbox(block.init(jax.random.key(0), *a)["params"]), h, skips, temb, audio)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), params)

    def loss(p, inputs):
        out = block.apply({"params": p}, inputs["h"], inputs["skips"], inputs["temb"], inputs["audio"])
        return jnp.mean(jnp.square(out.astype(jnp.float32)))
    fn = sharding_lib.with_activation_sharding(jax.value_and_grad(loss, argnums=(0, 1)), mesh, rules, batch_argnum=1)
    inputs = dict(h=h, skips=skips, temb=temb, audio=audio)
    return jax.jit(fn).lower(params, inputs), b


def _compile_vae_decode(trainer, task, batch, mesh, rules, rep, config):
    """value_and_grad w.r.t. the latents of the step's VAE decode of the predicted clip (as the
    step runs it: one ``jax.checkpoint`` around the whole decoder when remat is on), with the VAE's
    weights as the step holds them: its working set while the pixel losses are differentiated."""
    b, f, s = batch["gt_frames"].shape[:3]
    lat = s // 8
    sh = batch["gt_frames"].sharding
    latents = jax.ShapeDtypeStruct((b, f, lat, lat, 4), jnp.float32, sharding=sh)
    frozen_abs = jax.eval_shape(task.init_frozen, jax.random.key(0))
    min_mib = float(config.mesh.get("frozen_shard_min_mib", sharding_lib.FROZEN_SHARD_MIN_MIB))
    frozen = _with(frozen_abs, sharding_lib.frozen_shardings(frozen_abs, mesh, rules, min_mib))
    vae_params = frozen["vae"]

    def loss(z, params):
        return jnp.mean(jnp.square(trainer.decode(params, z)))
    fn = sharding_lib.with_activation_sharding(jax.value_and_grad(loss), mesh, rules, batch_argnum=0)
    return jax.jit(fn, out_shardings=(rep, sh)).lower(latents, vae_params), b


def fused_attention_calls(compiled_hlo: str) -> int:
    """Fused-attention kernel launches in a compiled program: Pallas TPU (Mosaic) custom calls and
    cuDNN flash-attention calls, forward and backward kernels counted separately."""
    return (compiled_hlo.count('custom_call_target="tpu_custom_call"')
            + compiled_hlo.count('custom_call_target="__cudnn$fmha'))


def nn_unbox(tree):
    import flax.linen as nn
    return nn.meta.unbox(tree)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/stage2_512.py")
    parser.add_argument("--target", default="cpu",
                        help="'cpu' (jax.devices()), 'tpu:<topology>' or 'gpu:<name>' (e.g. gpu:h100)")
    parser.add_argument("--mesh", default="8,1", help="DATA,FSDP")
    parser.add_argument("--batch", type=int, default=1, help="clips per data-parallel rank")
    parser.add_argument("--piece", choices=("step", "unet", "up_block", "vae_decode"), default="step")
    parser.add_argument("--resolution", type=int, default=0)
    parser.add_argument("--attention_backend", default="",
                        help="the UNet's and TREPA's VideoMAE's (default: 'auto'; the VAE's 512-channel head "
                             "and the SyncNet's attention keep 'auto')")
    parser.add_argument("--set", action="append", default=[], help="extra config override KEY=VALUE")
    args = parser.parse_args()
    data, fsdp = (int(v) for v in args.mesh.split(","))
    devices = target_devices(args.target, data * fsdp)
    if len(devices) < data * fsdp:
        raise SystemExit(f"--mesh {args.mesh} needs {data * fsdp} devices; --target {args.target} has {len(devices)}")
    devices = devices[:data * fsdp]
    overrides = [f"mesh.shape=({data}, {fsdp})"] + args.set
    if args.resolution:
        overrides.append(f"data.resolution={args.resolution}")
    config = load_config(resolve_path(args.config), overrides)
    mesh = Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), ("data", "fsdp"))
    start = time.perf_counter()
    lowered, global_batch = compile_step(config, mesh, args.batch, args.piece, args.attention_backend or None)
    lower_s = time.perf_counter() - start
    options = TRITON_OFF if devices[0].platform == "gpu" else {}  # see lipsync_jax/aot/compile.py
    compiled = lowered.compile(compiler_options=options)
    compile_s = time.perf_counter() - start - lower_s
    m = compiled.memory_analysis()
    fused_calls = fused_attention_calls(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    out = dict(config=args.config, piece=args.piece, target=args.target, device_kind=devices[0].device_kind,
               mesh=dict(data=data, fsdp=fsdp), global_batch=global_batch,
               resolution=int(config.data.resolution), frames=int(config.data.num_frames),
               remat=bool(config.run.enable_gradient_checkpointing),
               attention_backend=args.attention_backend or "auto", fused_attention_calls=fused_calls,
               compiler_options=options,
               per_device_gib=dict(arguments=m.argument_size_in_bytes / GIB, outputs=m.output_size_in_bytes / GIB,
                                   aliased=m.alias_size_in_bytes / GIB, temporaries=m.temp_size_in_bytes / GIB,
                                   generated_code=m.generated_code_size_in_bytes / GIB, peak=peak / GIB),
               flops_per_device=float(cost.get("flops", float("nan"))) if cost else None,
               lower_s=round(lower_s, 1), compile_s=round(compile_s, 1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
