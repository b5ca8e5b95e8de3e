"""The tiny random-weight models and the sampling settings the engine and live tests compare under."""

STEPS, GUIDANCE, SEED = 2, 1.5, 11
ROUNDOFF = 2e-4  # generated faces in [-1, 1] after 2 random-weight UNet steps + VAE, float32


def build_tiny_models():
    """configs/unet/tiny.py's models with random weights (seed 0)."""
    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline import build_models
    from tests.helpers.paths import TINY_CONFIG

    return build_models(load_config(TINY_CONFIG), random_init=True, seed=0)
