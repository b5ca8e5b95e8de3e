"""The device programs a user runs, traced for a target's compile-only devices (nothing allocated).

- ``trace_chunk_program``: the inference chunk program (``pipeline.program.ChunkProgram``: VAE
  encode, the whole sampling loop with CFG, VAE decode, paste-back) for ``chunk_batch`` chunks on
  one chip. The live mode (``stream.session``) runs this same program at chunk_batch 1.
- ``trace_whisper``: the Whisper encoder over ``batch`` 30 s mel windows (offline: up to 8 per call,
  ``AudioFeatureExtractor.max_batch``; live: one window per call).
- ``trace_train_step``: the UNet train step exactly as ``train.loop.run_training`` jits it (the
  task's step under ``guarded_step``, activation sharding, donated state), with the state, frozen
  networks and batch sharded as the loop shards them, on a ``(data, fsdp)`` mesh of the target.

Each returns ``(traced, items_per_call, cost_divisor)`` for ``compile.compile_traced``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lipsync_jax.accelerators import Target
from lipsync_jax.aot.compile import tracing_for
from lipsync_jax.aot.devices import target_mesh


def _with_sharding(tree: Any, sharding: Any) -> Any:
    shardings = sharding if not isinstance(sharding, NamedSharding) else jax.tree.map(lambda _x: sharding, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def trace_chunk_program(target: Target, models: Any, *, chunk_batch: int, vae_frames: int | None = None,
                        attention_backend: str = "auto", num_steps: int = 20, guidance_scale: float = 1.5,
                        sampler_options: Mapping[str, Any] | None = None):
    """The chunk program for one chip of ``target`` (module doc). ``models``: ``LipsyncModels``
    whose parameters may be ``ShapeDtypeStruct`` s (``pipeline.models.abstract_models``)."""
    from lipsync_jax.pipeline.memory import with_attention_backend
    from lipsync_jax.pipeline.program import ChunkProgram

    models = with_attention_backend(models, attention_backend)
    mesh = target_mesh(target, (1,), ("data",))
    program = ChunkProgram(models, mesh, num_steps=num_steps, guidance_scale=guidance_scale,
                           chunks_per_device=chunk_batch, sampler_options=dict(sampler_options or {}),
                           vae_frames=vae_frames)
    with tracing_for(target.platform):
        traced = program.trace(models.unet_params, models.vae_params)
    return traced, chunk_batch * models.num_frames, 1


def trace_whisper(target: Target, models: Any, batch: int):
    """The Whisper encoder over ``batch`` mel windows (batch, n_frames, n_mels) float32 on one chip."""
    mesh = target_mesh(target, (1,), ("data",))
    rep = NamedSharding(mesh, P())
    audio = models.audio
    params = _with_sharding(audio.params, rep)
    mel = jax.ShapeDtypeStruct((batch, audio.config.n_frames, audio.config.n_mels), jnp.float32, sharding=rep)
    fn = jax.jit(lambda p, x: audio.model.apply({"params": p}, x)[0])
    with tracing_for(target.platform):
        traced = fn.trace(params, mel)
    return traced, batch, 1


def abstract_train_batch(config: Any, global_batch: int, sharding: Any) -> dict:
    """The UNet loader's batch (train/synthetic.py's fields) as sharded ``ShapeDtypeStruct`` s."""
    d = config.data
    f, s = int(d.num_frames), int(d.resolution)
    frames = (global_batch, f, s, s)
    fields = dict(gt_frames=frames + (3,), masked_frames=frames + (3,), ref_frames=frames + (3,),
                  masks=frames + (1,), audio_embeds=(global_batch, f, 50, int(config.model.cross_attention_dim)),
                  mel=(global_batch, 80, 52, 1))
    return {k: jax.ShapeDtypeStruct(v, jnp.float32, sharding=sharding) for k, v in fields.items()}


def trace_train_step(target: Target, config_path: str, *, per_chip_batch: int = 1, data: int | None = None,
                     fsdp: int = 1, attention_backend: str | None = None, overrides: tuple[str, ...] = ()):
    """The UNet train step of the config at ``config_path`` on a ``(data, fsdp)`` mesh of ``target``
    (default: all its chips data-parallel, as docs/scaling.md recommends), ``per_chip_batch`` clips
    per data rank; ``overrides``: extra ``KEY=VALUE`` config settings."""
    from lipsync_jax import sharding as sharding_lib
    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.train.loop import guarded_step
    from lipsync_jax.train.state import TrainState, make_optimizer
    from lipsync_jax.train.unet_setup import build_unet_task

    data = int(data or target.chips // fsdp)
    mesh = target_mesh(target, (data, fsdp), ("data", "fsdp"))
    config = load_config(resolve_path(config_path), [f"mesh.shape=({data}, {fsdp})", *overrides])
    task = build_unet_task(config)
    if attention_backend:  # the trainer is a frozen dataclass: swap its UNet for one with this backend
        trainer = task.train_step.__self__
        object.__setattr__(trainer, "unet", trainer.unet.clone(attention_backend=attention_backend))
    rules = sharding_lib.rules_from_config(config.mesh)
    run = config.run
    tx, schedule = make_optimizer(config.optimizer, int(run.max_train_steps), 1, task.trainable)
    create = lambda p: TrainState.create(p, tx, jax.random.PRNGKey(0))  # noqa: E731
    state_sh = sharding_lib.state_shardings(jax.eval_shape(create, sharding_lib.box_params(
        task.param_shapes, task.logical_specs)), mesh, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         jax.eval_shape(create, task.param_shapes), state_sh)
    frozen_abstract = jax.eval_shape(task.init_frozen, jax.random.key(0))
    min_mib = float(config.mesh.get("frozen_shard_min_mib", sharding_lib.FROZEN_SHARD_MIN_MIB))
    frozen = _with_sharding(frozen_abstract, sharding_lib.frozen_shardings(frozen_abstract, mesh, rules, min_mib))
    global_batch = per_chip_batch * data
    batch = abstract_train_batch(config, global_batch, sharding_lib.batch_sharding(mesh, global_batch))
    step = guarded_step(task.train_step, schedule, bool(run.get("skip_nonfinite_updates", False)))
    jitted = jax.jit(sharding_lib.with_activation_sharding(step, mesh, rules, batch_argnum=2),
                     out_shardings=(state_sh, sharding_lib.replicated(mesh)), donate_argnums=(0,))
    with tracing_for(target.platform):
        traced = jitted.trace(state, frozen, batch)
    frames = int(config.data.num_frames)
    return traced, per_chip_batch * frames, math.prod(mesh.devices.shape)
