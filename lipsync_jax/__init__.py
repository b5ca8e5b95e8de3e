"""lipsync-jax: a JAX/Flax reimplementation of LatentSync (audio-conditioned latent-diffusion lip sync)."""

__version__ = "0.1.0"
