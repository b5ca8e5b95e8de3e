"""A tiny stage-1 UNet config for tests and CPU smoke runs: configs/unet/stage1.py's structure
with the unet_stage1_tiny golden fixture's model (block_out_channels 32/64/64/64,
norm_num_groups 8, no motion modules), 64 px faces, batch 2, float32, tiny VAE, random weights
everywhere (every checkpoint path "")."""

import ml_collections

from lipsync_jax.config_utils import import_sibling

tiny = import_sibling(__file__, "tiny.py")


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()  # tiny components, 64 px, batch 2, float32, random weights
    config.data.train_output_dir = "debug/unet_tiny_stage1"
    # stage 1 as configs/unet/stage1.py: latent MSE only, every parameter trained
    config.run.update(dict(pixel_space_supervise=False, use_syncnet=False, perceptual_loss_weight=0.1,
                           trepa_loss_weight=10.0))
    del config.run["trainable_modules"]
    config.model.use_motion_module = False
    return config
