"""LatentSync configs/unet/stage2_512.yaml (LatentSync 1.6): configs/unet/stage2.py at 512 px
(``data.resolution`` 512, 64x64 latents); everything else as stage 2.

Paths: see configs/common.py (unet_data, unet_ckpt); ``data.train_fileslist`` "" is required
for training (or ``data.train_data_dir``).
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

stage2 = import_sibling(__file__, "stage2.py")


def get_config() -> ml_collections.ConfigDict:
    config = stage2.get_config()
    config.data.resolution = 512  # 64x64 latents; LatentSync comments: batch_size 1 (# 4)
    return config
