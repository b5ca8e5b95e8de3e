"""Pieces that LatentSync's config files repeat verbatim, written once.

LatentSync's five configs/unet/*.yaml share the same ``data``, ``ckpt``, ``optimizer`` and
``model`` sections apart from a few fields (resolution, use_motion_module,
motion_module_decoder_only); its three configs/syncnet/*.yaml share ``ckpt``, ``data``,
``optimizer`` and ``run`` apart from a few fields. The config modules call these builders with
exactly those differences, and spell out the ``run`` sections (where the stages differ) in full.

The components LatentSync hard-codes in its scripts (DDIM scheduler, VAE, Whisper) come from
their own config modules (configs/scheduler.py, configs/vae/*.py, configs/whisper/*.py) via
``component()``.

Numbers that LatentSync's YAML writes as integers but that are weights or rates (e.g.
``recon_loss_weight: 1``) are floats here so that ``--config.run.recon_loss_weight=0.5`` is
accepted; the values are equal. Lists are tuples (the sequence type config_flags can override).
"""

import os

import ml_collections

from lipsync_jax import config_utils

CONFIGS_DIR = os.path.dirname(os.path.abspath(__file__))

# The UNet ``model`` section of LatentSync's configs/unet/stage2.yaml (LatentSync 1.5/1.6).
_UNET_MODEL = dict(
    act_fn="silu",
    add_audio_layer=True,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=384,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    mid_block_type="UNetMidBlock3DCrossAttn",
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=13,  # noisy latents 4 + mask 1 + masked latents 4 + reference latents 4
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    resnet_time_scale_shift="default",
    use_motion_module=True,
    motion_module_resolutions=(1, 2, 4, 8),
    motion_module_mid_block=False,
    motion_module_decoder_only=False,
    motion_module_type="Vanilla",
    motion_module_kwargs=dict(
        num_attention_heads=8,
        num_transformer_block=1,
        attention_block_types=("Temporal_Self", "Temporal_Self"),
        temporal_position_encoding=True,
        temporal_position_encoding_max_len=24,
        temporal_attention_dim_div=1,
        zero_initialize=True,
    ),
)


def unet_model(*, motion_module_kwargs=None, **changes) -> ml_collections.ConfigDict:
    """LatentSync's UNet ``model`` section, with ``changes`` (unknown names are refused)."""
    model = dict(_UNET_MODEL, motion_module_kwargs=dict(_UNET_MODEL["motion_module_kwargs"]))
    _update_known(model, changes, "model")
    _update_known(model["motion_module_kwargs"], motion_module_kwargs or {}, "model.motion_module_kwargs")
    return ml_collections.ConfigDict(model)


def unet_data(**changes) -> ml_collections.ConfigDict:
    """LatentSync's UNet ``data`` section (identical in all unet YAMLs but ``resolution``).

    Cluster paths of the original became: train_fileslist "" (required unless train_data_dir
    is set), the two cache dirs relative defaults under cache/. The demo clip and mask point at
    the copies in this repository."""
    data = dict(
        syncnet_config_path="configs/syncnet/syncnet_16_pixel_attn.py",
        train_output_dir="debug/unet",
        train_fileslist="",
        train_data_dir="",
        audio_embeds_cache_dir="cache/audio_embeds",
        audio_mel_cache_dir="cache/audio_mel",
        val_video_path="tests/data/assets/demo1_video.mp4",
        val_audio_path="tests/data/assets/demo1_audio.wav",
        batch_size=1,
        num_workers=12,
        num_frames=16,
        resolution=256,
        mask_image_path="lipsync_jax/face/assets/mask.png",
        audio_sample_rate=16000,
        video_fps=25,
        audio_feat_length=(2, 2),
    )
    _update_known(data, changes, "data")
    return ml_collections.ConfigDict(data)


def unet_ckpt(**changes) -> ml_collections.ConfigDict:
    """LatentSync's UNet ``ckpt`` section. resume_ckpt_path is the official checkpoint's
    name; "" means start from random weights."""
    ckpt = dict(resume_ckpt_path="checkpoints/latentsync_unet.pt", save_ckpt_steps=10000)
    _update_known(ckpt, changes, "ckpt")
    return ml_collections.ConfigDict(ckpt)


def unet_optimizer(**changes) -> ml_collections.ConfigDict:
    """LatentSync's UNet ``optimizer`` section (AdamW)."""
    optimizer = dict(lr=1e-5, scale_lr=False, max_grad_norm=1.0, lr_scheduler="constant", lr_warmup_steps=0)
    _update_known(optimizer, changes, "optimizer")
    return ml_collections.ConfigDict(optimizer)


def syncnet_ckpt(**changes) -> ml_collections.ConfigDict:
    """LatentSync's SyncNet ``ckpt`` section."""
    ckpt = dict(resume_ckpt_path="", inference_ckpt_path="", save_ckpt_steps=2500)
    _update_known(ckpt, changes, "ckpt")
    return ml_collections.ConfigDict(ckpt)


def syncnet_data(**changes) -> ml_collections.ConfigDict:
    """LatentSync's SyncNet ``data`` section (pixel-space values). Cluster paths of the
    original became: train_fileslist and val_data_dir "" (required: set them, or the
    *_data_dir / *_fileslist alternative), audio_mel_cache_dir a relative default."""
    data = dict(
        train_output_dir="debug/syncnet",
        num_val_samples=2048,
        batch_size=256,
        gradient_accumulation_steps=1,
        num_workers=12,
        latent_space=False,
        num_frames=16,
        resolution=256,
        train_fileslist="",
        train_data_dir="",
        val_fileslist="",
        val_data_dir="",
        audio_mel_cache_dir="cache/audio_mel",
        lower_half=True,
        audio_sample_rate=16000,
        video_fps=25,
    )
    _update_known(data, changes, "data")
    return ml_collections.ConfigDict(data)


def syncnet_optimizer(**changes) -> ml_collections.ConfigDict:
    optimizer = dict(lr=1e-5, max_grad_norm=1.0)
    _update_known(optimizer, changes, "optimizer")
    return ml_collections.ConfigDict(optimizer)


def syncnet_run(**changes) -> ml_collections.ConfigDict:
    run = dict(max_train_steps=10000000, validation_steps=2500, mixed_precision_training=True, seed=42)
    _update_known(run, changes, "run")
    return ml_collections.ConfigDict(run)


def component(relative_path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of another module under configs/, e.g. ``component("vae/tiny.py")``."""
    path = os.path.join(CONFIGS_DIR, relative_path)
    return config_utils.load_config(path if arg is None else f"{path}:{arg}")


def add_components(config: ml_collections.ConfigDict, *, vae: str = "vae/sd_vae_ft_mse.py",
                   whisper: str = "whisper/tiny.py") -> ml_collections.ConfigDict:
    """Adds the ``scheduler``, ``vae`` and ``whisper`` sections LatentSync hard-codes in its
    scripts (DDIMScheduler.from_pretrained("configs"), stabilityai/sd-vae-ft-mse with scaling
    0.18215, checkpoints/whisper/tiny.pt for cross_attention_dim 384)."""
    config.scheduler = component("scheduler.py")
    config.vae = component(vae)
    config.whisper = component(whisper)
    if "run" in config:  # our sampler options (lipsync_jax.diffusion); the defaults are LatentSync's loop
        config.run.update(SAMPLER_RUN_FIELDS)
        config.run.max_vram_gb = 0.0  # inference device-memory budget, GiB (infer.py --max_vram; 0: no limit)
    return config


# scheduler: "ddim" | "dpmsolver++" | "lcm" (a distilled student); deepcache_interval: 0/1 off
# (LatentSync's --enable_deepcache is 3); overlap: frames shared by consecutive 16-frame windows
# (0 = LatentSync's disjoint chunks).
SAMPLER_RUN_FIELDS = dict(scheduler="ddim", deepcache_interval=0, overlap=0)


def _update_known(target: dict, changes: dict, section: str) -> None:
    unknown = sorted(set(changes) - set(target))
    if unknown:
        raise config_utils.ConfigError(f"{section}: unknown fields {unknown}")
    target.update({k: config_utils.to_config_value(v) for k, v in changes.items()})


# ---------------------------------------------------------------- training sections (ours)
# Not in LatentSync's YAMLs: the device mesh of lipsync_jax.train and the frozen loss networks
# that LatentSync constructs in its scripts (lpips.LPIPS(net="vgg"), TREPALoss with VideoMAEv2
# giant). ckpt_path: a folder written by `python -m lipsync_jax.convert {lpips,videomae} ...`;
# "" = random weights (tests only).
_VIDEOMAE_GIANT = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, patch_size=14, img_size=224,
                       all_frames=16, tubelet_size=2, in_chans=3, qkv_bias=True, ln_eps=1e-6, use_mean_pooling=True)


# The training loop's own ``run`` fields (lipsync_jax.train.loop): metrics fetched from the devices
# every log_every_steps steps; input batches put on the devices prefetch_batches steps ahead; a
# non-finite loss/grad norm stops the run unless skip_nonfinite_updates drops such updates.
LOOP_RUN_FIELDS = dict(log_every_steps=10, prefetch_batches=2, skip_nonfinite_updates=False)


def mesh(**changes) -> ml_collections.ConfigDict:
    """``axes`` names and ``shape`` sizes (-1 = the remaining devices): data parallel x FSDP;
    frozen networks of ``frozen_shard_min_mib`` MiB or more are sharded like the trained UNet
    (lipsync_jax.sharding.FROZEN_SHARD_MIN_MIB), smaller ones replicated."""
    section = dict(axes=("data", "fsdp"), shape=(-1, 1), frozen_shard_min_mib=64.0)
    _update_known(section, changes, "mesh")
    return ml_collections.ConfigDict(section)


def add_training_sections(config: ml_collections.ConfigDict, *, tiny: bool = False) -> ml_collections.ConfigDict:
    """Adds ``mesh``, ``lpips`` and ``trepa`` to a UNet config (``tiny``: narrow random networks),
    and the training loop's ``run`` fields (``LOOP_RUN_FIELDS``)."""
    config.mesh = mesh()
    config.run.update(LOOP_RUN_FIELDS)
    if tiny:
        config.lpips = ml_collections.ConfigDict(dict(net="vgg", vgg_widths=(8, 16, 16, 32, 32), ckpt_path=""))
        model = dict(_VIDEOMAE_GIANT, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, img_size=28)
        config.trepa = ml_collections.ConfigDict(dict(model=model, ckpt_path=""))
    else:
        config.lpips = ml_collections.ConfigDict(dict(net="vgg", vgg_widths=(64, 128, 256, 512, 512),
                                                      ckpt_path="checkpoints/lpips_vgg"))
        config.trepa = ml_collections.ConfigDict(dict(model=dict(_VIDEOMAE_GIANT),
                                                      ckpt_path="checkpoints/videomae_giant"))
    return config
