"""SyncNet training step (LatentSync's ``train_syncnet.py``): BCE of the cosine similarity of
the visual and audio embeddings against the pair label (1 = in sync, 0 = shifted audio).

Batch fields (``lipsync_jax.data`` SyncNet batches): ``frames`` (b, f, s, s, 3) in [-1, 1],
``mel`` (b, 80, 52, 1), ``labels`` (b,). The model sees the lower half of the faces (when the
config's ``data.lower_half``) with the f frames stacked on channels. Pair accuracy counts a
pair as predicted "in sync" when its cosine similarity exceeds 0.5.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lipsync_jax.losses.sync import cosine_similarity, sync_loss
from lipsync_jax.models.syncnet import StableSyncNet, stack_frames
from lipsync_jax.train.state import TrainState, masked_global_norm

SYNCNET_BATCH_FIELDS = ("frames", "mel", "labels")


@dataclasses.dataclass(frozen=True, eq=False)
class SyncNetTrainer:
    model: StableSyncNet
    lower_half: bool = True

    def images(self, frames: jax.Array) -> jax.Array:
        """(b, f, s, s, 3) -> (b, s/2, s, 3f) (lower half) or (b, s, s, 3f)."""
        return stack_frames(frames.astype(jnp.float32), lower_half=self.lower_half)

    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        deterministic = rng is None
        rngs = None if deterministic else {"dropout": rng}
        vision, audio = self.model.apply({"params": params}, self.images(batch["frames"]),
                                         batch["mel"].astype(jnp.float32), deterministic, rngs=rngs)
        labels = batch["labels"].astype(jnp.float32)
        loss = jnp.mean(sync_loss(vision, audio, labels))
        predicted = (cosine_similarity(vision, audio) > 0.5).astype(jnp.float32)
        return loss, {"accuracy": jnp.mean((predicted == labels).astype(jnp.float32))}

    def train_step(self, state: TrainState, frozen: Mapping[str, Any],
                   batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        del frozen  # the SyncNet has no frozen companions
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, batch, rng)
        return state.apply_gradients(grads), dict(loss=loss, grad_norm=masked_global_norm(grads, None), **aux)

    def eval_step(self, params: Any, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array],
                  rng: jax.Array) -> dict[str, jax.Array]:
        del frozen, rng
        loss, aux = self.loss(params, batch, None)
        return dict(loss=loss, **aux)
