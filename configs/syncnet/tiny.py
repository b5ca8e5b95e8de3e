"""A narrow StableSyncNet for tests and CPU smoke runs (channels of the syncnet_tiny golden
fixture), with the syncnet_16_pixel_attn structure and random weights (checkpoint paths "").

``get_config()`` (or ``tiny.py:64``) takes the lower half of 64 px faces, (48, 32, 64), as the
tiny UNet configs produce them: the visual encoder's last two blocks do not downsample.
``tiny.py:256`` takes the lower half of 256 px faces, (48, 128, 256), and is exactly the
fixture's model. Small batches, no worker processes, float32.
"""

import ml_collections

from lipsync_jax.config_utils import ConfigError, import_sibling

common = import_sibling(__file__, "../common.py")

# Face resolution -> visual encoder downsampling (product = (height / 2, width) -> 1x1).
_VISUAL_DOWNSAMPLE = {
    64: ((1, 2), 2, 2, 2, 2, 2, 1, 1),
    256: ((1, 2), 2, 2, 2, 2, 2, 2, 2),
}


def get_config(resolution: str = "64") -> ml_collections.ConfigDict:
    if not resolution.isdigit() or int(resolution) not in _VISUAL_DOWNSAMPLE:
        raise ConfigError(f"configs/syncnet/tiny.py:{resolution}: resolution must be one of "
                          f"{sorted(_VISUAL_DOWNSAMPLE)}")
    resolution = int(resolution)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        audio_encoder=dict(  # input (1, 80, 52)
            in_channels=1,
            block_out_channels=(32, 32, 32, 32, 64, 128, 256),
            downsample_factors=((2, 1), 2, 2, 1, 2, 2, (2, 3)),
            attn_blocks=(0, 0, 0, 1, 1, 0, 0),
            dropout=0.0,
        ),
        visual_encoder=dict(  # input (48, resolution / 2, resolution)
            in_channels=48,
            block_out_channels=(32, 32, 32, 32, 64, 128, 256, 256),
            downsample_factors=_VISUAL_DOWNSAMPLE[resolution],
            attn_blocks=(0, 0, 0, 0, 1, 1, 0, 0),
            dropout=0.0,
        ),
    ))
    config.ckpt = common.syncnet_ckpt(save_ckpt_steps=50)
    config.data = common.syncnet_data(train_output_dir="debug/syncnet_tiny", num_val_samples=8,
                                      batch_size=4, num_workers=0, resolution=resolution)
    config.optimizer = common.syncnet_optimizer()
    config.run = common.syncnet_run(max_train_steps=100, validation_steps=50, mixed_precision_training=False)
    config.mesh = common.mesh()
    return config
