"""Which module checks which fixture kind.

Each entry names a module exposing ``check_fixture(fixture) -> list[Comparison]`` and, for kinds
that have full-size manifests, ``check_manifest(manifest) -> list[Comparison]``. Modules are
imported lazily, so a kind whose implementation does not exist yet reports ``MISSING``.
"""

from __future__ import annotations

# fixture kind (meta["kind"]) -> module implementing its checks
CHECK_MODULES: dict[str, str] = {
    "unet": "lipsync_jax.golden.check_unet",
    "sampling_loop": "lipsync_jax.golden.check_sampling",
    "ddim": "lipsync_jax.golden.check_sampling",
    "sampling_deepcache": "lipsync_jax.golden.check_sampling",
    "sampling_dpmsolver": "lipsync_jax.golden.check_sampling",
    "whisper_audio": "lipsync_jax.golden.check_audio",
    "syncnet_mel": "lipsync_jax.golden.check_audio",
    "vae": "lipsync_jax.golden.check_vae",
    "syncnet": "lipsync_jax.golden.check_syncnet",
    "align_restore": "lipsync_jax.golden.check_face",
    "lpips": "lipsync_jax.golden.check_losses",
    "trepa": "lipsync_jax.golden.check_losses",
    "lse_syncnet": "lipsync_jax.golden.check_eval_nets",
    "s3fd": "lipsync_jax.golden.check_eval_nets",
    "i3d": "lipsync_jax.golden.check_eval_models",
    "hyperiqa": "lipsync_jax.golden.check_eval_models",
}

# manifest name prefix (file stem without "manifest_") -> fixture kind
MANIFEST_KINDS: tuple[tuple[str, str], ...] = (
    ("unet_", "unet"),
    ("sd_vae", "vae"),
    ("syncnet_", "syncnet"),
    ("whisper_", "whisper_audio"),
    ("lpips_", "lpips"),
    ("videomaev2_", "trepa"),
    ("lse_syncnet", "lse_syncnet"),
    ("s3fd", "s3fd"),
    ("i3d_", "i3d"),
    ("hyperiqa_", "hyperiqa"),
)


def manifest_kind(name: str) -> str | None:
    for prefix, kind in MANIFEST_KINDS:
        if name.startswith(prefix):
            return kind
    return None
