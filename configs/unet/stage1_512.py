"""LatentSync configs/unet/stage1_512.yaml (LatentSync 1.6): configs/unet/stage1.py at 512 px
(``data.resolution`` 512); everything else as stage 1.

Paths: see configs/common.py (unet_data, unet_ckpt); ``data.train_fileslist`` "" is required
for training (or ``data.train_data_dir``); ``ckpt.resume_ckpt_path`` "" trains from scratch.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

stage1 = import_sibling(__file__, "stage1.py")


def get_config() -> ml_collections.ConfigDict:
    config = stage1.get_config()
    config.data.resolution = 512  # 64x64 latents; LatentSync comments: batch_size 1 (# 8)
    return config
