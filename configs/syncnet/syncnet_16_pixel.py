"""LatentSync configs/syncnet/syncnet_16_pixel.yaml: StableSyncNet on pixels without attention
blocks (otherwise as configs/syncnet/syncnet_16_pixel_attn.py). LatentSync ships no
checkpoint for it (``ckpt.inference_ckpt_path`` ""). Paths: ``data.train_fileslist`` (or
train_data_dir) and ``data.val_data_dir`` (or val_fileslist) "" are required for training.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        audio_encoder=dict(  # input (1, 80, 52)
            in_channels=1,
            block_out_channels=(32, 64, 128, 256, 512, 1024, 2048),
            downsample_factors=((2, 1), 2, 2, 1, 2, 2, (2, 3)),
            attn_blocks=(0, 0, 0, 0, 0, 0, 0),
            dropout=0.0,
        ),
        visual_encoder=dict(  # input (48, 128, 256)
            in_channels=48,
            block_out_channels=(64, 128, 256, 256, 512, 1024, 2048, 2048),
            downsample_factors=((1, 2), 2, 2, 2, 2, 2, 2, 2),
            attn_blocks=(0, 0, 0, 0, 0, 0, 0, 0),
            dropout=0.0,
        ),
    ))
    config.ckpt = common.syncnet_ckpt()
    config.data = common.syncnet_data()
    config.optimizer = common.syncnet_optimizer()
    config.run = common.syncnet_run()
    config.mesh = common.mesh()
    return config
