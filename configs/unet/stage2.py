"""LatentSync configs/unet/stage2.yaml (LatentSync 1.6): stage-2 training of the UNet at 256 px.

Starts from a stage-1 (or official) UNet, adds the motion modules, and trains only the
parameters whose names contain ``run.trainable_modules`` (motion modules and attention
layers), with the pixel-space losses on the one-step x0 estimate decoded by the VAE: SyncNet
(0.05), LPIPS on the lower half (0.1), TREPA (10), beside the noise MSE (1).

Sections: data / ckpt / run / optimizer / model as in the YAML, plus scheduler / vae / whisper
(fixed in LatentSync's scripts). Paths: see configs/common.py (unet_data, unet_ckpt);
``data.train_fileslist`` "" is required for training (or ``data.train_data_dir``).
LatentSync 1.5 used ``run.guidance_scale`` 2.0; 1.6 (mirrored here) uses 1.5.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")
stage1 = import_sibling(__file__, "stage1.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = common.unet_data(resolution=256)  # LatentSync comments: batch_size 1 (# 4)
    config.ckpt = common.unet_ckpt()
    config.run = stage1.run_section(pixel_space_supervise=True, use_syncnet=True,
                                    trainable_modules=("motion_modules.", "attentions."))
    config.optimizer = common.unet_optimizer()
    config.model = common.unet_model(use_motion_module=True)
    common.add_components(config)
    common.add_training_sections(config)
    return config
