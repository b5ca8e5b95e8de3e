"""Train state and optimizer: float32 master params, AdamW with LatentSync's settings, a
warmup + constant/cosine LR schedule, grad-norm clipping, and a frozen/trainable split.

LatentSync (``train_unet.py``) trains every UNet parameter in stage 1 and, when the model has
motion modules, only the parameters whose dotted names contain one of
``run.trainable_modules`` (e.g. ``"motion_modules."``, ``"attentions."``). Our parameter paths
(``down_blocks_0/attentions_1/...``) are compared in LatentSync's spelling
(``down_blocks.0.attentions.1...``, see ``models.unet3d.latentsync_module_name``), so the
same patterns select the same modules. Frozen parameters go through ``optax.set_to_zero`` inside
``optax.multi_transform``: no update and no Adam moments for them. Clipping
(``optimizer.max_grad_norm``) and the logged grad norm cover the trainable parameters only,
as ``clip_grad_norm_(trainable_params)`` does. AdamW uses torch's defaults (betas 0.9/0.999,
eps 1e-8, weight decay 1e-2); ``optimizer.scale_lr`` multiplies the LR by the process count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lipsync_jax.models.unet3d import trainable_mask

ADAMW_DEFAULTS = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2)  # torch.optim.AdamW


class OptimizerConfigError(ValueError):
    """``config.optimizer`` asks for something not implemented."""


@struct.dataclass
class TrainState:
    step: jax.Array        # () int32: optimizer steps taken
    params: Any            # float32 master parameters
    opt_state: Any
    rng: jax.Array         # typed base key (jax.random.key); step keys are fold_in(rng, step)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    # exponential moving average of params, updated after every optimizer step (the target
    # network of consistency distillation); None when the task keeps none
    ema_params: Any = None
    ema_decay: float | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array,
               ema_decay: float | None = None) -> TrainState:
        """``ema_decay`` (e.g. 0.95): keep ``ema_params``, starting as a copy of ``params``."""
        ema = None if ema_decay is None else jax.tree.map(jnp.copy, params)
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng, tx=tx,
                   ema_params=ema, ema_decay=ema_decay)

    def apply_gradients(self, grads: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema = self.ema_params
        if ema is not None:
            decay = jnp.float32(self.ema_decay)
            ema = jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype), ema, params)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema)


def learning_rate_schedule(optimizer_config: Mapping[str, Any], max_train_steps: int,
                           num_processes: int = 1) -> optax.Schedule:
    """LR per step: linear warmup over ``lr_warmup_steps`` (diffusers' ``get_scheduler``
    semantics: lr * step / warmup), then constant or cosine decay to 0 at ``max_train_steps``."""
    lr = float(optimizer_config["lr"]) * (num_processes if optimizer_config.get("scale_lr", False) else 1)
    warmup = int(optimizer_config.get("lr_warmup_steps", 0))
    kind = optimizer_config.get("lr_scheduler", "constant")
    if kind in ("constant", "constant_with_warmup"):
        after = optax.constant_schedule(lr)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(1, int(max_train_steps) - warmup))
    else:
        raise OptimizerConfigError(f"optimizer.lr_scheduler {kind!r}: choose constant, constant_with_warmup or cosine")
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optimizer_config: Mapping[str, Any], max_train_steps: int, num_processes: int = 1,
                   trainable: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW + clipping on the trainable leaves (bool tree ``trainable``; None = all)."""
    schedule = learning_rate_schedule(optimizer_config, max_train_steps, num_processes)
    inner = optax.chain(optax.clip_by_global_norm(float(optimizer_config.get("max_grad_norm", 1.0))),
                        optax.adamw(schedule, **ADAMW_DEFAULTS))
    if trainable is None:
        return inner, schedule
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
    return optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels), schedule


def unet_trainable(params: Any, model_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Any:
    """LatentSync's rule: all parameters without motion modules, else ``run.trainable_modules``."""
    if not model_config.get("use_motion_module", False):
        return None
    patterns: Sequence[str] = tuple(run_config.get("trainable_modules", ()))
    if not patterns:
        raise OptimizerConfigError("run.trainable_modules is empty but the model has motion modules "
                                   "(LatentSync trains only the named modules then)")
    mask = trainable_mask(params, patterns)
    if not any(jax.tree.leaves(mask)):
        raise OptimizerConfigError(f"run.trainable_modules {tuple(patterns)} match no parameter")
    return mask


def masked_global_norm(grads: Any, trainable: Any) -> jax.Array:
    if trainable is None:
        return optax.global_norm(grads)
    return optax.global_norm(jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable))
