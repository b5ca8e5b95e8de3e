"""LatentSync's SyncNet loss: binary cross-entropy of the cosine similarity against "in sync".

``loss = BCE(cos(vision_embeds, audio_embeds), 1) = -log(cos)`` per sample, computed like
``torch.nn.BCELoss``: the log is clamped at -100, so a non-positive similarity gives 100 (PyTorch
would refuse inputs outside [0, 1]; here they saturate). Differentiable; the stage-2 UNet
training uses it with a frozen SyncNet.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

LOG_CLAMP = -100.0  # torch.nn.BCELoss clamps log(p) and log(1 - p) at -100


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity over the last axis (torch's ``F.cosine_similarity``), float32."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps) * jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return jnp.sum(a * b, axis=-1) / norms


def _safe_log(p: jax.Array) -> jax.Array:
    """``max(log p, -100)`` (``-100`` for p <= 0) with finite gradients everywhere."""
    positive = p > 0
    log_p = jnp.log(jnp.where(positive, p, 1.0))  # the double where keeps NaN out of the gradient
    return jnp.maximum(jnp.where(positive, log_p, LOG_CLAMP), LOG_CLAMP)


def bce(probs: jax.Array, targets: jax.Array | float) -> jax.Array:
    """Element-wise ``torch.nn.BCELoss(reduction="none")``."""
    targets = jnp.asarray(targets, jnp.float32)
    return -(targets * _safe_log(probs) + (1.0 - targets) * _safe_log(1.0 - probs))


def sync_loss(vision_embeds: jax.Array, audio_embeds: jax.Array, targets: jax.Array | float = 1.0) -> jax.Array:
    """Per-sample loss (b,) for (b, c) embeddings; ``targets`` 1 = in sync, 0 = off sync."""
    return bce(cosine_similarity(vision_embeds, audio_embeds), targets)


def syncnet_sync_loss(model: Any, params: Any, video: jax.Array, audio: jax.Array,
                      lower_half: bool = True, targets: jax.Array | float = 1.0) -> jax.Array:
    """Per-sample sync loss (b,) of 16-frame clips ``video`` (b, 16, h, w, 3) in [-1, 1] (full
    aligned faces; ``lower_half`` crops them as LatentSync does) against SyncNet-mel windows
    ``audio`` (b, 80, 52) or (b, 80, 52, 1), through a ``StableSyncNet`` with bare ``params``
    (frozen or not). The stage-2 UNet loss and the tests use this one function."""
    from lipsync_jax.models.syncnet import stack_frames

    images = stack_frames(video, lower_half=lower_half)  # (b, h, w, 48)
    if audio.ndim == 3:
        audio = audio[..., None]
    vision_embeds, audio_embeds = model.apply({"params": params}, images, audio)
    return sync_loss(vision_embeds, audio_embeds, targets)
