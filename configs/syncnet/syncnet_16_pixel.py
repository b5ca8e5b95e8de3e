"""LatentSync configs/syncnet/syncnet_16_pixel.yaml: StableSyncNet on pixels without attention
blocks (otherwise as configs/syncnet/syncnet_16_pixel_attn.py). LatentSync ships no
checkpoint for it (``ckpt.inference_ckpt_path`` ""). Paths: ``data.train_fileslist`` (or
train_data_dir) and ``data.val_data_dir`` (or val_fileslist) "" are required for training.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

pixel_attn = import_sibling(__file__, "syncnet_16_pixel_attn.py")


def get_config() -> ml_collections.ConfigDict:
    config = pixel_attn.get_config()
    config.model.audio_encoder.attn_blocks = (0,) * len(config.model.audio_encoder.attn_blocks)
    config.model.visual_encoder.attn_blocks = (0,) * len(config.model.visual_encoder.attn_blocks)
    config.ckpt.inference_ckpt_path = ""
    return config
