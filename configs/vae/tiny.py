"""A narrow VAE with the sd-vae-ft-mse structure (the vae_tiny golden fixture's config), for
tests and CPU smoke runs of the whole pipeline. No checkpoint: ``ckpt_path`` "" means random
weights. Same latent scaling as the real VAE."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        model=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=2,
            act_fn="silu",
            latent_channels=4,
            norm_num_groups=16,
            sample_size=256,
        ),
        scaling_factor=0.18215,
        shift_factor=0.0,
        ckpt_path="",
    ))
