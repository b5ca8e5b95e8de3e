"""A tiny stage-1 UNet config for tests and CPU smoke runs: configs/unet/stage1.py's structure
with the unet_stage1_tiny golden fixture's model (block_out_channels 32/64/64/64,
norm_num_groups 8, no motion modules), 64 px faces, batch 2, float32, tiny VAE, random weights
everywhere (every checkpoint path "")."""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = common.unet_data(
        syncnet_config_path="configs/syncnet/tiny.py",
        train_output_dir="debug/unet_tiny_stage1",
        resolution=64,
        batch_size=2,
        num_workers=0,
    )
    config.ckpt = common.unet_ckpt(resume_ckpt_path="", save_ckpt_steps=50)
    config.run = ml_collections.ConfigDict(dict(
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
        mixed_precision_training=False,
        enable_gradient_checkpointing=False,
        max_train_steps=100,
        max_train_epochs=-1,
        val_inference=False,  # inference + SyncNet score at each checkpoint (lipsync_jax.train.validation)
        val_max_seconds=2.0,
    ))
    config.optimizer = common.unet_optimizer()
    config.model = common.unet_model(
        use_motion_module=False,
        block_out_channels=(32, 64, 64, 64),
        norm_num_groups=8,
        motion_module_kwargs=dict(zero_initialize=False),
    )
    common.add_components(config, vae="vae/tiny.py")
    config.whisper.ckpt_path = ""
    common.add_training_sections(config, tiny=True)
    return config
