"""LatentSync configs/unet/stage2_efficient.yaml (LatentSync 1.6): a cheaper stage 2.

Differs from configs/unet/stage2.py in three places: motion modules only in the decoder
(``model.motion_module_decoder_only`` true), only the motion modules and the audio
cross-attention (``attn2.``) are trained, and no TREPA loss (``run.trepa_loss_weight`` 0).

Paths: see configs/common.py (unet_data, unet_ckpt); ``data.train_fileslist`` "" is required
for training (or ``data.train_data_dir``).
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = common.unet_data(resolution=256)  # LatentSync comments: batch_size 1 (# 4)
    config.ckpt = common.unet_ckpt()
    config.run = ml_collections.ConfigDict(dict(
        pixel_space_supervise=True,
        use_syncnet=True,
        sync_loss_weight=0.05,
        perceptual_loss_weight=0.1,
        recon_loss_weight=1.0,
        guidance_scale=1.5,
        trepa_loss_weight=0.0,
        inference_steps=20,
        trainable_modules=("motion_modules.", "attn2."),
        seed=1247,
        use_mixed_noise=True,
        mixed_noise_alpha=1.0,
        mixed_precision_training=True,
        enable_gradient_checkpointing=True,
        max_train_steps=10000000,
        max_train_epochs=-1,
    ))
    config.optimizer = common.unet_optimizer()
    config.model = common.unet_model(use_motion_module=True, motion_module_decoder_only=True)
    common.add_components(config)
    common.add_training_sections(config)
    return config
