"""The UNet training step as LatentSync's ``train_unet.py`` computes it, as pure functions.

Per batch (shapes channels-last; see ``lipsync_jax.train.synthetic`` for the batch fields):
1. VAE-encode target, masked and reference frames with the frozen VAE (posterior samples,
   scaled by 0.18215); the pixel mask is resized to the latent grid (nearest, as torch's
   ``F.interpolate`` default).
2. Noise: with ``run.use_mixed_noise`` the sum of a component shared by all frames of a clip
   (std ``sqrt(a^2 / (1 + a^2))``) and a per-frame one (std ``sqrt(1 / (1 + a^2))``),
   ``a = run.mixed_noise_alpha``; otherwise one noise image repeated over the frames.
3. One uniform random timestep per clip; ``x_t = add_noise(latents, noise, t)``.
4. UNet input ``[x_t, mask, masked latents, reference latents]`` (13 channels); loss terms:
   ``recon`` = MSE(predicted noise, noise); with ``run.pixel_space_supervise``: the one-step x0
   estimate (clipped if the scheduler clips), decoded by the VAE, then
   ``lpips`` (lower halves, ``perceptual_loss_weight``), ``trepa`` (whole clips,
   ``trepa_loss_weight``) and, with ``run.use_syncnet``, ``sync`` (BCE-of-cosine of the frozen
   SyncNet on the lower halves stacked over 16 frames, against the batch's mel crop). Without
   ``pixel_space_supervise``, ``sync`` is computed as LatentSync does it then: the x0 latents
   (b, f, h/8, w/8, 4) stacked over the frames into a latent-space SyncNet
   (``data.syncnet_config_path`` = configs/syncnet/syncnet_16_latent.py), nothing decoded.
   The frozen networks' parameters get no gradients (stop_gradient); only the UNet's do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lipsync_jax.diffusion.conditioning import latent_mask
from lipsync_jax.diffusion.ddim import DDIMScheduler
from lipsync_jax.losses.lpips import LPIPS, lpips_lower_half
from lipsync_jax.losses.sync import syncnet_sync_loss
from lipsync_jax.losses.trepa import TREPALoss, resize_bicubic
from lipsync_jax.models.syncnet import StableSyncNet
from lipsync_jax.models.unet3d import UNet3DConditionModel
from lipsync_jax.models.vae import AutoencoderKL, decode_latents, encode_to_latents
from lipsync_jax.train.state import TrainState, masked_global_norm

UNET_BATCH_FIELDS = ("gt_frames", "masked_frames", "ref_frames", "masks", "audio_embeds", "mel")
LOSS_TERMS = ("recon", "sync", "lpips", "trepa")


@dataclasses.dataclass(frozen=True)
class UNetLossSettings:
    """The ``run`` fields the loss reads (LatentSync names in the comments)."""

    recon_weight: float = 1.0          # recon_loss_weight
    sync_weight: float = 0.0           # sync_loss_weight (used with use_syncnet)
    lpips_weight: float = 0.0          # perceptual_loss_weight
    trepa_weight: float = 0.0          # trepa_loss_weight
    pixel_space_supervise: bool = False
    use_syncnet: bool = False
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    syncnet_resolution: int = 256      # the SyncNet config's data.resolution
    syncnet_lower_half: bool = True
    syncnet_latent_space: bool = False  # the SyncNet config's data.latent_space (sync loss on latents)
    remat: bool = False                # enable_gradient_checkpointing (UNet, VAE decode, TREPA)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], syncnet_data: Mapping[str, Any] | None = None) -> UNetLossSettings:
        run = config["run"]
        syncnet_data = syncnet_data or {}
        return cls(recon_weight=float(run["recon_loss_weight"]), sync_weight=float(run["sync_loss_weight"]),
                   lpips_weight=float(run["perceptual_loss_weight"]), trepa_weight=float(run["trepa_loss_weight"]),
                   pixel_space_supervise=bool(run["pixel_space_supervise"]), use_syncnet=bool(run["use_syncnet"]),
                   use_mixed_noise=bool(run["use_mixed_noise"]), mixed_noise_alpha=float(run["mixed_noise_alpha"]),
                   syncnet_resolution=int(syncnet_data.get("resolution", config["data"]["resolution"])),
                   syncnet_lower_half=bool(syncnet_data.get("lower_half", True)),
                   syncnet_latent_space=bool(syncnet_data.get("latent_space", False)),
                   remat=bool(run["enable_gradient_checkpointing"]))

    @property
    def uses_sync(self) -> bool:
        """The SyncNet loss: on decoded pixels with ``pixel_space_supervise``, else (as LatentSync)
        on the one-step x0 latents stacked over the frames, for a latent-space SyncNet."""
        return self.use_syncnet and self.sync_weight != 0

    @property
    def uses_lpips(self) -> bool:
        return self.pixel_space_supervise and self.lpips_weight != 0

    @property
    def uses_trepa(self) -> bool:
        return self.pixel_space_supervise and self.trepa_weight != 0


def mixed_noise(key: jax.Array, shape: tuple[int, ...], use_mixed: bool, alpha: float) -> jax.Array:
    """(b, f, h, w, c) noise: shared-over-frames + per-frame parts (see module docstring)."""
    b, f = shape[:2]
    k_shared, k_ind = jax.random.split(key)
    shared = jax.random.normal(k_shared, (b, 1) + tuple(shape[2:]), jnp.float32)
    if not use_mixed:
        return jnp.broadcast_to(shared, shape)
    shared_std = (alpha ** 2 / (1 + alpha ** 2)) ** 0.5
    ind_std = (1 / (1 + alpha ** 2)) ** 0.5
    return shared * shared_std + jax.random.normal(k_ind, shape, jnp.float32) * ind_std


class EncodedBatch(NamedTuple):
    """A batch on the latent grid, as the UNet is conditioned on it (step 1 of the module docstring)."""

    gt_latents: jax.Array      # (b, f, h, w, 4) scaled posterior samples of the target frames
    masks: jax.Array           # (b, f, h, w, 1) the mask channel
    masked_latents: jax.Array  # (b, f, h, w, 4)
    ref_latents: jax.Array     # (b, f, h, w, 4)

    @property
    def conditioning(self) -> jax.Array:
        """(b, f, h, w, 9) = [mask, masked latents, reference latents] (the sampler's order)."""
        return jnp.concatenate([self.masks, self.masked_latents, self.ref_latents], axis=-1)

    def unet_input(self, noisy: jax.Array) -> jax.Array:
        """(b, f, h, w, 13) = [noisy latents, mask, masked latents, reference latents]."""
        return jnp.concatenate([noisy, self.masks, self.masked_latents, self.ref_latents], axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (holds arrays)
class UNetTrainer:
    """Static pieces of the step; ``frozen`` params (``vae``, ``syncnet``, ``lpips``, ``trepa``)
    and the UNet params are passed to the methods, so one trainer can be jitted with shardings."""

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    scheduler: DDIMScheduler
    settings: UNetLossSettings
    syncnet: StableSyncNet | None = None
    lpips: LPIPS | None = None
    trepa: TREPALoss | None = None
    trainable: Any = None  # bool tree (None = all trainable); for the logged grad norm

    def __post_init__(self):
        s = self.settings
        missing = [name for name, used, net in (("syncnet", s.uses_sync, self.syncnet),
                                                ("lpips", s.uses_lpips, self.lpips),
                                                ("trepa", s.uses_trepa, self.trepa)) if used and net is None]
        if missing:
            raise ValueError(f"loss terms {missing} have non-zero weights but no network was given")

    # ---------------------------------------------------------------- pieces
    def encode(self, vae_params: Any, frames: jax.Array, key: jax.Array) -> jax.Array:
        """(b, f, h, w, 3) -> scaled latent samples (b, f, h/8, w/8, 4), no gradient."""
        b, f = frames.shape[:2]
        latents = encode_to_latents(self.vae, vae_params, frames.reshape((b * f,) + frames.shape[2:]), key)
        return jax.lax.stop_gradient(latents.reshape((b, f) + latents.shape[1:]).astype(jnp.float32))

    def encode_batch(self, vae_params: Any, batch: Mapping[str, jax.Array],
                     keys: tuple[jax.Array, jax.Array, jax.Array]) -> EncodedBatch:
        """Target, masked and reference frames -> latents (keys: their posterior samples), and
        the pixel mask on the latent grid (nearest, as torch's ``F.interpolate`` default)."""
        k_gt, k_masked, k_ref = keys
        gt_latents = self.encode(vae_params, batch["gt_frames"].astype(jnp.float32), k_gt)  # (b, f, h, w, 4)
        masked_latents = self.encode(vae_params, batch["masked_frames"].astype(jnp.float32), k_masked)
        ref_latents = self.encode(vae_params, batch["ref_frames"].astype(jnp.float32), k_ref)
        masks = latent_mask(batch["masks"].astype(jnp.float32), gt_latents.shape[2:4])  # (b, f, h, w, 1)
        return EncodedBatch(gt_latents, masks, masked_latents, ref_latents)

    def noise_like(self, key: jax.Array, latents: jax.Array) -> jax.Array:
        """The training noise for ``latents`` (``run.use_mixed_noise``, ``mixed_noise_alpha``)."""
        return mixed_noise(key, latents.shape, self.settings.use_mixed_noise, self.settings.mixed_noise_alpha)

    def decode(self, vae_params: Any, latents: jax.Array) -> jax.Array:
        """(b, f, h, w, 4) -> frames (b, f, 8h, 8w, 3); differentiable w.r.t. the latents."""
        b, f = latents.shape[:2]
        fn = lambda z: decode_latents(self.vae, vae_params, z)  # noqa: E731
        if self.settings.remat:
            fn = jax.checkpoint(fn)
        images = fn(latents.reshape((b * f,) + latents.shape[2:]))
        return images.reshape((b, f) + images.shape[1:]).astype(jnp.float32)

    def sync_term(self, syncnet_params: Any, frames: jax.Array, mel: jax.Array) -> jax.Array:
        res = self.settings.syncnet_resolution
        if not self.settings.syncnet_latent_space and frames.shape[2:4] != (res, res):
            frames = resize_bicubic(frames, (res, res))
        return jnp.mean(syncnet_sync_loss(self.syncnet, jax.lax.stop_gradient(syncnet_params), frames,
                                          jax.lax.stop_gradient(mel), lower_half=self.settings.syncnet_lower_half))

    def sync_of_latents(self, frozen: Mapping[str, Any], latents: jax.Array, mel: jax.Array) -> jax.Array:
        """The SyncNet loss of predicted clean latents (b, f, h, w, 4): decoded by the VAE for a
        pixel SyncNet (``pixel_space_supervise``), else on the latents themselves, as ``loss``."""
        if not self.settings.pixel_space_supervise:
            return self.sync_term(frozen["syncnet"], latents, mel)
        frames = self.decode(jax.lax.stop_gradient(frozen["vae"]), latents)
        return self.sync_term(frozen["syncnet"], frames, mel)

    # ---------------------------------------------------------------- loss
    def denoise(self, params: Any, encoded: EncodedBatch, audio_embeds: jax.Array, k_noise: jax.Array,
                k_t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Steps 2-4 of the module docstring on encoded latents: (noise, timesteps (b,), noisy
        latents, predicted noise), the latents (b, f, h, w, 4); keys for the noise and timesteps."""
        gt_latents = encoded.gt_latents
        noise = self.noise_like(k_noise, gt_latents)
        timesteps = jax.random.randint(k_t, (gt_latents.shape[0],), 0, self.scheduler.num_train_timesteps)
        noisy = self.scheduler.add_noise(gt_latents, noise, timesteps)
        pred_noise = self.unet.apply({"params": params}, encoded.unet_input(noisy), timesteps, audio_embeds)
        return noise, timesteps, noisy, pred_noise

    def loss(self, params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array],
             rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        s = self.settings
        k_gt, k_masked, k_ref, k_noise, k_t = jax.random.split(rng, 5)
        vae_params = jax.lax.stop_gradient(frozen["vae"])
        gt_frames = batch["gt_frames"].astype(jnp.float32)
        encoded = self.encode_batch(vae_params, batch, (k_gt, k_masked, k_ref))
        noise, timesteps, noisy, pred_noise = self.denoise(params, encoded, batch["audio_embeds"], k_noise, k_t)

        terms = {name: jnp.zeros((), jnp.float32) for name in LOSS_TERMS}
        terms["recon"] = jnp.mean(jnp.square(pred_noise.astype(jnp.float32) - noise))
        if s.pixel_space_supervise or s.uses_sync:
            pred_latents = self.scheduler.one_step_x0(noisy, pred_noise, timesteps)
            if self.scheduler.config.clip_sample:
                pred_latents = jnp.clip(pred_latents, -1.0, 1.0)
        if s.uses_sync and not s.pixel_space_supervise:  # latent-space SyncNet on the x0 latents
            terms["sync"] = self.sync_term(frozen["syncnet"], pred_latents, batch["mel"])
        if s.pixel_space_supervise:
            pred_frames = self.decode(vae_params, pred_latents)  # (b, f, H, W, 3)
            if s.uses_lpips:
                terms["lpips"] = lpips_lower_half(frozen["lpips"], pred_frames, gt_frames, model=self.lpips)
            if s.uses_trepa:
                terms["trepa"] = self.trepa(frozen["trepa"], pred_frames, gt_frames)
            if s.uses_sync:
                terms["sync"] = self.sync_term(frozen["syncnet"], pred_frames, batch["mel"])
        loss = (s.recon_weight * terms["recon"] + s.sync_weight * terms["sync"]
                + s.lpips_weight * terms["lpips"] + s.trepa_weight * terms["trepa"])
        return loss, terms

    # ---------------------------------------------------------------- step
    def train_step(self, state: TrainState, frozen: Mapping[str, Any],
                   batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step; the step's key is ``fold_in(state.rng, state.step)``."""
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, terms), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, frozen, batch, rng)
        new_state = state.apply_gradients(grads)
        metrics = dict(loss=loss, grad_norm=masked_global_norm(grads, self.trainable), **terms)
        return new_state, metrics

    def eval_step(self, params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array],
                  rng: jax.Array) -> dict[str, jax.Array]:
        loss, terms = self.loss(params, frozen, batch, rng)
        return dict(loss=loss, **terms)
