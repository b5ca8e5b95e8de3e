"""LatentSync configs/unet/stage2_efficient.yaml (LatentSync 1.6): a cheaper stage 2.

Differs from configs/unet/stage2.py in three places: motion modules only in the decoder
(``model.motion_module_decoder_only`` true), only the motion modules and the audio
cross-attention (``attn2.``) are trained, and no TREPA loss (``run.trepa_loss_weight`` 0).

Paths: see configs/common.py (unet_data, unet_ckpt); ``data.train_fileslist`` "" is required
for training (or ``data.train_data_dir``).
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

stage2 = import_sibling(__file__, "stage2.py")


def get_config() -> ml_collections.ConfigDict:
    config = stage2.get_config()
    config.model.motion_module_decoder_only = True
    config.run.trainable_modules = ("motion_modules.", "attn2.")
    config.run.trepa_loss_weight = 0.0
    return config
