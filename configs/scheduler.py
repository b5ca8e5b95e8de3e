"""DDIM noise scheduler: LatentSync's configs/scheduler_config.json as diffusers 0.32.2 reads it
(the file's values plus diffusers' defaults for the fields it leaves out). Used for training
(add_noise, the one-step x0 estimate) and for sampling (20 steps, eta 0)."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=config_dict.placeholder(tuple),  # None: betas come from beta_schedule
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
        skip_prk_steps=True,  # in LatentSync's json; no effect on DDIM
    ))
