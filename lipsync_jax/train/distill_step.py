"""Consistency distillation of LatentSync's UNet (LCM, for an epsilon-prediction teacher), as pure
functions: the student learns to map a noisy latent at any skip-step timestep of the
classifier-free-guided teacher's trajectory to the same clean latent.

Per batch (channels-last; the batch fields and conditioning of stage 2, prepared by
``UNetTrainer.encode_batch``: VAE latents of the target, masked and reference frames, the mask
channel, the per-frame audio windows):
1. noise as stage 2 (``run.use_mixed_noise``); one skip-step timestep per clip, ``t`` drawn from
   the teacher's DDIM schedule ``k-1, 2k-1, ..., T-1`` (``k = T / distill.origin_steps``);
   ``x_t = add_noise(latents, noise, t)``;
2. the frozen teacher with classifier-free guidance at ``distill.guidance_scale`` (zero audio as
   the unconditional branch, both branches in one UNet call, exactly as the sampler) and one DDIM
   step ``x_t -> x_{t-k}`` (``t - k < 0`` lands on the final alpha, as LCM's DDIM solver);
3. target ``f_ema(x_{t-k}, max(t-k, 0))`` from the EMA target network (``TrainState.ema_params``,
   decay ``distill.ema_decay``), no gradient; student ``f(x_t, t)``; ``f`` is the consistency
   function of ``lipsync_jax.diffusion.lcm`` (c_skip x + c_out x0);
4. loss ``consistency`` = mean squared error (``distill.loss`` "l2") or the pseudo-Huber
   ``sqrt(d^2 + c^2) - c`` ("huber", ``distill.huber_c``), plus, with ``run.use_syncnet``, the
   stage-2 SyncNet loss of the student's prediction (decoded by the VAE with
   ``run.pixel_space_supervise``, else a latent SyncNet) weighted ``run.sync_loss_weight``.
UNet calls per clip: teacher 2 (its CFG batch), target 1, student 1 (+ backward).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lipsync_jax.diffusion.lcm import LCMScheduler, skip_step_timesteps
from lipsync_jax.diffusion.sampler import ModuleApply, guided_noise_pred
from lipsync_jax.train.state import TrainState, masked_global_norm
from lipsync_jax.train.unet_step import EncodedBatch, UNetTrainer

DISTILL_TERMS = ("consistency", "sync")
LOSSES = ("l2", "huber")


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """The ``distill`` section of a distillation config (configs/unet/distill.py)."""

    teacher_ckpt_path: str = ""
    student_steps: int = 4           # the sampling steps the student is meant for (its metadata)
    origin_steps: int = 50           # skip-step schedule: k = T / origin_steps
    guidance: str = "fixed"          # the teacher's CFG scale is distilled in (no extra input)
    guidance_scale: float = 1.5
    teacher_solver: str = "ddim"
    ema_decay: float = 0.95
    loss: str = "l2"
    huber_c: float = 0.001
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0

    @classmethod
    def from_config(cls, distill: Mapping[str, Any]) -> DistillSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(distill) - names)
        if unknown:
            raise ValueError(f"distill: unknown fields {unknown}")
        settings = cls(**dict(distill))
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.guidance != "fixed":
            raise ValueError(f"distill.guidance {self.guidance!r}: only 'fixed' (the scale distilled into the "
                             "student, no extra input) is implemented")
        if self.teacher_solver != "ddim":
            raise ValueError(f"distill.teacher_solver {self.teacher_solver!r}: only 'ddim' is implemented")
        if self.loss not in LOSSES:
            raise ValueError(f"distill.loss {self.loss!r}: choose from {LOSSES}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"distill.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 1 <= self.student_steps <= self.origin_steps:
            raise ValueError(f"distill.student_steps must be in [1, origin_steps={self.origin_steps}], "
                             f"got {self.student_steps}")

    @property
    def lcm_config(self) -> dict[str, Any]:
        return dict(origin_steps=int(self.origin_steps), sigma_data=float(self.sigma_data),
                    timestep_scaling=float(self.timestep_scaling))


def pseudo_huber(diff: jax.Array, c: float) -> jax.Array:
    return jnp.sqrt(jnp.square(diff) + c * c) - c


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (holds arrays)
class DistillTrainer:
    """``base`` holds the UNet, VAE, DDIM scheduler, SyncNet and loss settings of stage 2; the
    frozen teacher is ``frozen["teacher"]`` (same UNet config as the student)."""

    base: UNetTrainer
    settings: DistillSettings
    lcm: LCMScheduler
    trainable: Any = None

    def __post_init__(self):
        s = self.base.settings
        if s.uses_lpips or s.uses_trepa:
            raise ValueError("the distill task has no LPIPS/TREPA terms: set run.perceptual_loss_weight and "
                             "run.trepa_loss_weight to 0")
        if s.uses_sync and self.base.syncnet is None:
            raise ValueError("run.use_syncnet with a non-zero run.sync_loss_weight needs a SyncNet")

    def skip_steps(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """One skip-step pair per clip: (t, t - k), int32 (b,) each."""
        total, origin = self.base.scheduler.num_train_timesteps, self.settings.origin_steps
        schedule = jnp.asarray(skip_step_timesteps(total, origin))
        t = schedule[jax.random.randint(key, (batch_size,), 0, origin)]
        return t, t - total // origin

    def unet(self, params: Any, sample: jax.Array, t: jax.Array, audio_embeds: jax.Array) -> jax.Array:
        return self.base.unet.apply({"params": params}, sample, t, audio_embeds).astype(jnp.float32)

    def loss(self, params: Any, target_params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array],
             rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        k_gt, k_masked, k_ref, k_noise, k_t = jax.random.split(rng, 5)
        vae_params = jax.lax.stop_gradient(frozen["vae"])
        encoded = self.base.encode_batch(vae_params, batch, (k_gt, k_masked, k_ref))
        mel = batch["mel"] if self.base.settings.uses_sync else None
        return self.latent_loss(params, target_params, frozen, encoded, batch["audio_embeds"], mel, k_noise, k_t)

    def latent_loss(self, params: Any, target_params: Any, frozen: Mapping[str, Any], encoded: EncodedBatch,
                    audio: jax.Array, mel: jax.Array | None, k_noise: jax.Array,
                    k_t: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Steps 1-4 of the module docstring on an encoded batch (``frozen["vae"]`` is used only by
        a pixel-space SyncNet loss; ``mel`` only by the SyncNet loss)."""
        base, s = self.base, self.settings
        latents = encoded.gt_latents
        t, prev_t = self.skip_steps(k_t, latents.shape[0])
        noisy = base.scheduler.add_noise(latents, base.noise_like(k_noise, latents), t)

        # the guided teacher's DDIM step x_t -> x_{t-k} (no gradient)
        teacher = jax.lax.stop_gradient(frozen["teacher"])
        teacher_noise = guided_noise_pred(ModuleApply(base.unet), teacher, encoded.unet_input(noisy), t, audio,
                                          s.guidance_scale)
        previous = jax.lax.stop_gradient(base.scheduler.step_to(teacher_noise, t, prev_t, noisy).prev_sample)
        # the EMA target network at t - k (t = 0 there gives the sample itself: c_skip 1, c_out 0)
        target_t = jnp.maximum(prev_t, 0)
        target_params = jax.lax.stop_gradient(target_params)
        target = self.lcm.consistency(self.unet(target_params, encoded.unet_input(previous), target_t, audio),
                                      previous, target_t)
        target = jax.lax.stop_gradient(target)
        prediction = self.lcm.consistency(self.unet(params, encoded.unet_input(noisy), t, audio), noisy, t)

        diff = prediction - target
        terms = {name: jnp.zeros((), jnp.float32) for name in DISTILL_TERMS}
        terms["consistency"] = jnp.mean(jnp.square(diff) if s.loss == "l2" else pseudo_huber(diff, s.huber_c))
        if base.settings.uses_sync:
            terms["sync"] = base.sync_of_latents(frozen, prediction, mel)
        loss = terms["consistency"] + base.settings.sync_weight * terms["sync"]
        return loss, terms

    def train_step(self, state: TrainState, frozen: Mapping[str, Any],
                   batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step (the EMA target follows in ``apply_gradients``); the step's key is
        ``fold_in(state.rng, state.step)``."""
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, terms), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, state.ema_params, frozen,
                                                                           batch, rng)
        new_state = state.apply_gradients(grads)
        return new_state, dict(loss=loss, grad_norm=masked_global_norm(grads, self.trainable), **terms)

    def eval_step(self, params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array],
                  rng: jax.Array) -> dict[str, jax.Array]:
        """Held-out loss with the student as its own target (the EMA is not passed to evaluation)."""
        loss, terms = self.loss(params, params, frozen, batch, rng)
        return dict(loss=loss, **terms)
