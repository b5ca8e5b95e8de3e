"""SyncNet training step (LatentSync's ``train_syncnet.py``): BCE of the cosine similarity of
the visual and audio embeddings against the pair label (1 = in sync, 0 = shifted audio).

Batch fields (``lipsync_jax.data`` SyncNet batches): ``frames`` (b, f, s, s, 3) in [-1, 1],
``mel`` (b, 80, 52, 1), ``labels`` (b,). Pixel space: the model sees the lower half of the faces
(when the config's ``data.lower_half``) with the f frames stacked on channels. Latent space
(``data.latent_space``, LatentSync's ``syncnet_16_latent``): the frames are first encoded by the
frozen VAE (a posterior sample times the scaling factor, as the UNet's latents; the posterior
mean for evaluation), then stacked the same way, (b, s/8, s/8, 4f), lower half only if asked.
Pair accuracy counts a pair as predicted "in sync" when its cosine similarity exceeds 0.5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lipsync_jax.losses.sync import cosine_similarity, sync_loss
from lipsync_jax.models.syncnet import StableSyncNet, stack_frames
from lipsync_jax.models.vae import AutoencoderKL, encode_to_latents
from lipsync_jax.train.state import TrainState, masked_global_norm

SYNCNET_BATCH_FIELDS = ("frames", "mel", "labels")


@dataclasses.dataclass(frozen=True, eq=False)
class SyncNetTrainer:
    model: StableSyncNet
    lower_half: bool = True
    vae: AutoencoderKL | None = None  # set: latent-space SyncNet (frozen["vae"] holds its params)

    def images(self, frames: jax.Array, frozen: Mapping[str, Any] | None = None,
               key: jax.Array | None = None) -> jax.Array:
        """(b, f, s, s, 3) -> (b, s/2, s, 3f) (lower half) or (b, s, s, 3f); latent space:
        (b, s/8, s/8, 4f) (or its lower half)."""
        frames = frames.astype(jnp.float32)
        if self.vae is not None:
            b, f = frames.shape[:2]
            latents = encode_to_latents(self.vae, jax.lax.stop_gradient(frozen["vae"]),
                                        frames.reshape((b * f,) + frames.shape[2:]), key)
            frames = jax.lax.stop_gradient(latents.reshape((b, f) + latents.shape[1:]).astype(jnp.float32))
        return stack_frames(frames, lower_half=self.lower_half)

    def loss(self, params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array | None,
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        deterministic = rng is None
        k_dropout, k_vae = (None, None) if deterministic else jax.random.split(rng)
        rngs = None if deterministic else {"dropout": k_dropout}
        vision, audio = self.model.apply({"params": params}, self.images(batch["frames"], frozen, k_vae),
                                         batch["mel"].astype(jnp.float32), deterministic, rngs=rngs)
        labels = batch["labels"].astype(jnp.float32)
        loss = jnp.mean(sync_loss(vision, audio, labels))
        predicted = (cosine_similarity(vision, audio) > 0.5).astype(jnp.float32)
        return loss, {"accuracy": jnp.mean((predicted == labels).astype(jnp.float32))}

    def train_step(self, state: TrainState, frozen: Mapping[str, Any],
                   batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, frozen, batch, rng)
        return state.apply_gradients(grads), dict(loss=loss, grad_norm=masked_global_norm(grads, None), **aux)

    def eval_step(self, params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array],
                  rng: jax.Array) -> dict[str, jax.Array]:
        del rng
        loss, aux = self.loss(params, frozen, batch, None)
        return dict(loss=loss, **aux)
