"""LatentSync configs/unet/stage1.yaml (LatentSync 1.6): stage-1 training of the UNet at 256 px.

No motion modules (``model.use_motion_module`` false), all parameters trained, latent-space
noise MSE only (``run.pixel_space_supervise`` and ``run.use_syncnet`` false; the other loss
weights are present, as in the YAML, but unused). As in LatentSync there is no
``run.trainable_modules`` field in stage 1.

Paths: see configs/common.py (unet_data, unet_ckpt); ``data.train_fileslist`` "" is required
for training (or ``data.train_data_dir``); ``ckpt.resume_ckpt_path`` "" trains from scratch.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")


def run_section(**changes) -> ml_collections.ConfigDict:
    """Stage 1's ``run`` section; ``changes`` set other values (stage 2 derives its own from it)."""
    run = dict(
        pixel_space_supervise=False,
        use_syncnet=False,
        sync_loss_weight=0.05,
        perceptual_loss_weight=0.1,
        recon_loss_weight=1.0,
        guidance_scale=1.5,
        trepa_loss_weight=10.0,
        inference_steps=20,
        seed=1247,
        use_mixed_noise=True,
        mixed_noise_alpha=1.0,
        mixed_precision_training=True,
        enable_gradient_checkpointing=True,
        max_train_steps=10000000,
        max_train_epochs=-1,
        val_inference=True,  # inference + SyncNet score at each checkpoint (lipsync_jax.train.validation)
        val_max_seconds=10.0,
    )
    run.update(changes)
    return ml_collections.ConfigDict(run)


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = common.unet_data(resolution=256)  # LatentSync comments: batch_size 1 (# 24)
    config.ckpt = common.unet_ckpt()
    config.run = run_section()
    config.optimizer = common.unet_optimizer()
    config.model = common.unet_model(use_motion_module=False)
    common.add_components(config)
    common.add_training_sections(config)
    return config
