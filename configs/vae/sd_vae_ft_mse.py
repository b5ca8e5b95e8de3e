"""The VAE LatentSync uses: stabilityai/sd-vae-ft-mse (diffusers AutoencoderKL), frozen.

``model`` is the diffusers config.json structure; LatentSync overrides the latent scaling to
``scaling_factor`` 0.18215 and ``shift_factor`` 0 (latents = (z - shift) * scale).
``ckpt_path`` is the diffusers folder (config.json + safetensors) as downloaded from the hub;
"" would mean random weights."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        model=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            act_fn="silu",
            latent_channels=4,
            norm_num_groups=32,
            sample_size=256,
        ),
        scaling_factor=0.18215,
        shift_factor=0.0,
        ckpt_path="checkpoints/sd-vae-ft-mse",
    ))
