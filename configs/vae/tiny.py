"""A narrow VAE with the sd-vae-ft-mse structure (the vae_tiny golden fixture's config), for
tests and CPU smoke runs of the whole pipeline. No checkpoint: ``ckpt_path`` "" means random
weights. Same latent scaling as the real VAE."""

import ml_collections

from lipsync_jax.config_utils import import_sibling

sd_vae = import_sibling(__file__, "sd_vae_ft_mse.py")


def get_config() -> ml_collections.ConfigDict:
    config = sd_vae.get_config()
    config.model.block_out_channels = (32, 64, 64, 64)
    config.model.norm_num_groups = 16
    config.ckpt_path = ""
    return config
