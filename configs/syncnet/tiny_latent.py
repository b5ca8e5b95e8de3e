"""A narrow latent-space StableSyncNet for tests and CPU smoke runs: configs/syncnet/tiny.py's
data/optimizer/run sections with ``data.latent_space`` true and the tiny VAE (configs/vae/tiny.py,
random weights): 64 px faces -> (8, 8, 4) latents per frame, 16 frames stacked on channels =
(8, 8, 64), whole face as configs/syncnet/syncnet_16_latent.py."""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")
tiny = import_sibling(__file__, "tiny.py")


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.data.train_output_dir = "debug/syncnet_tiny_latent"
    config.data.latent_space = True
    config.data.lower_half = False
    config.model.visual_encoder = ml_collections.ConfigDict(dict(  # input (64, 8, 8)
        in_channels=64,
        block_out_channels=(32, 32, 64, 128, 256, 256),
        downsample_factors=(1, 2, 2, 2, 1, 1),
        attn_blocks=(0, 0, 0, 0, 0, 0),
        dropout=0.0,
    ))
    config.vae = common.component("vae/tiny.py")
    return config
