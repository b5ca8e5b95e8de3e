"""configs/unet/tiny.py with all four stage-2 loss terms on, as configs/unet/stage2.py weights
them (recon 1, SyncNet 0.05, LPIPS 0.1, TREPA 10), computed by tiny random networks: the tiny
SyncNet, a narrow LPIPS VGG (widths 8/16/16/32/32) and a one-block VideoMAEv2 on 28 px clips
(the ``lpips`` / ``trepa`` sections of tiny.py). For tests and CPU smoke runs of stage 2."""

import ml_collections

from lipsync_jax.config_utils import import_sibling

tiny = import_sibling(__file__, "tiny.py")


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.data.train_output_dir = "debug/unet_tiny_stage2_losses"
    config.run.perceptual_loss_weight = 0.1
    config.run.trepa_loss_weight = 10.0
    return config
