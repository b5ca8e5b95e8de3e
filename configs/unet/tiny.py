"""A tiny stage-2 UNet training/inference config for tests and CPU smoke runs.

Same structure as configs/unet/stage2.py; the model is the unet_stage2_tiny golden fixture's
(block_out_channels 32/64/64/64, norm_num_groups 8 for resnets and spatial transformers; the
motion modules keep their own GroupNorm of 32 groups; zero_initialize false so the temporal
layers matter). 64 px faces (8x8 latents), batch 2, no worker processes, float32, no remat.

Components are tiny or small too: configs/vae/tiny.py, Whisper tiny dims, the tiny SyncNet
(configs/syncnet/tiny.py, which takes the lower half of 64 px faces). Every checkpoint path is
"" = random weights. LPIPS and TREPA weights are 0 here; the SyncNet loss is on as in stage 2.
The ``lpips`` / ``trepa`` sections hold tiny random networks, used by tiny_stage2_losses.py
(all four loss terms on); ``mesh`` is the training device mesh (lipsync_jax.train).

``get_sweep()`` is a demonstration learning-rate sweep: ``--sweep_index=0..2``.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = common.unet_data(
        syncnet_config_path="configs/syncnet/tiny.py",
        train_output_dir="debug/unet_tiny",
        resolution=64,
        batch_size=2,
        num_workers=0,
    )
    config.ckpt = common.unet_ckpt(resume_ckpt_path="", save_ckpt_steps=50)
    config.run = ml_collections.ConfigDict(dict(
        pixel_space_supervise=True,
        use_syncnet=True,
        sync_loss_weight=0.05,
        perceptual_loss_weight=0.0,
        recon_loss_weight=1.0,
        guidance_scale=1.5,
        trepa_loss_weight=0.0,
        inference_steps=20,
        # + conv_out: the tiny config starts from RANDOM weights, where conv_out is zero-initialised
        # (as in LatentSync); frozen, it would stop every gradient. Real stage 2 starts from a
        # trained UNet and trains only motion modules and attentions (configs/unet/stage2.py).
        trainable_modules=("motion_modules.", "attentions.", "conv_out."),
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
        use_motion_module=True,
        block_out_channels=(32, 64, 64, 64),
        norm_num_groups=8,
        motion_module_kwargs=dict(zero_initialize=False),
    )
    common.add_components(config, vae="vae/tiny.py")
    config.whisper.ckpt_path = ""
    common.add_training_sections(config, tiny=True)
    return config


def get_sweep() -> list[dict]:
    return [{"optimizer.lr": lr} for lr in (1e-4, 3e-4, 1e-3)]
