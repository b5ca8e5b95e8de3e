"""LatentSync configs/syncnet/syncnet_16_latent.yaml: StableSyncNet on VAE latents (16 frames
x 4 latent channels = 64 input channels at 32x32, whole face: ``data.lower_half`` false,
``data.latent_space`` true). LatentSync ships no checkpoint for it (``ckpt.inference_ckpt_path``
""). The ``vae`` section (ours: LatentSync hard-codes sd-vae-ft-mse in train_syncnet.py) is the
frozen VAE that encodes the faces during training: a converted folder (``python -m
lipsync_jax.convert vae``) or the original; the latents are posterior samples times 0.18215, as the
UNet's. Train with ``python train.py --config=configs/syncnet/syncnet_16_latent.py ...``; a UNet
uses it for its SyncNet loss in latent space (``run.pixel_space_supervise`` false,
``data.syncnet_config_path`` pointing here). Paths: ``data.train_fileslist`` (or train_data_dir)
and ``data.val_data_dir`` (or val_fileslist) "" are required for training.
"""

import ml_collections

from lipsync_jax.config_utils import import_sibling

common = import_sibling(__file__, "../common.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        audio_encoder=dict(  # input (1, 80, 52)
            in_channels=1,
            block_out_channels=(32, 64, 128, 256, 512, 1024),
            downsample_factors=((2, 1), 2, 2, 2, 2, (2, 3)),
            attn_blocks=(0, 0, 0, 0, 0, 0),
            dropout=0.0,
        ),
        visual_encoder=dict(  # input (64, 32, 32)
            in_channels=64,
            block_out_channels=(64, 128, 256, 256, 512, 1024),
            downsample_factors=(2, 2, 2, 1, 2, 2),
            attn_blocks=(0, 0, 0, 0, 0, 0),
            dropout=0.0,
        ),
    ))
    config.ckpt = common.syncnet_ckpt()
    config.data = common.syncnet_data(num_val_samples=1200, batch_size=120, latent_space=True, lower_half=False)
    config.optimizer = common.syncnet_optimizer()
    config.run = common.syncnet_run()
    config.mesh = common.mesh()
    config.vae = common.component("vae/sd_vae_ft_mse.py")
    return config
