"""The proof's window sampler (tests/helpers/distill_proof.py ``ClipLatents.sample``): reference
windows never share a frame with their target window, and every allowed start is drawn."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers.distill_proof import ClipLatents


def test_reference_windows_never_overlap_and_cover_every_allowed_start():
    n, frames = 12, 3
    index = jnp.arange(n, dtype=jnp.float32)[:, None, None, None]  # frame i's latents hold i
    clip = ClipLatents(latents=jnp.broadcast_to(index, (n, 1, 1, 4)), masked=jnp.zeros((n, 1, 1, 4)),
                       masks=jnp.zeros((n, 1, 1, 1)), audio=jnp.zeros((n, 2, 3)))
    encoded, audio = jax.jit(lambda k: clip.sample(k, 2000, frames))(jax.random.key(0))
    target = np.asarray(encoded.gt_latents[:, :, 0, 0, 0]).astype(int)  # (b, frames) frame indices
    ref = np.asarray(encoded.ref_latents[:, :, 0, 0, 0]).astype(int)
    assert audio.shape == (2000, frames, 2, 3)
    assert np.all(np.diff(target, axis=1) == 1) and np.all(np.diff(ref, axis=1) == 1)  # consecutive frames
    assert np.all(np.abs(target[:, 0] - ref[:, 0]) >= frames)  # no shared frame
    starts = n - frames + 1
    assert set(target[:, 0]) == set(range(starts))
    for s in range(starts):  # every non-overlapping reference start occurs for target start s
        allowed = {r for r in range(starts) if abs(r - s) >= frames}
        assert set(ref[target[:, 0] == s, 0]) == allowed, s
