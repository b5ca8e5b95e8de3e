"""Fine-tuning LatentSync's stage-2 UNet on your own footage (LatentSync's recipe: 100-1000
clips, lr 1e-6, 5,000-10,000 steps), walked through in the README ("Fine-tune on your own
videos").

configs/unet/stage2.py (the stage-2 trainable modules: motion modules and attentions; SyncNet,
LPIPS and TREPA losses on the decoded x0) with small-dataset settings:

- starts from ``ckpt.resume_ckpt_path`` = the official ``checkpoints/latentsync_unet.pt``
  (converted on the fly) or a converted / exported folder (``python -m lipsync_jax.convert unet``,
  ``python -m lipsync_jax.train.export``);
- AdamW at lr 1e-6 after a 200-step linear warmup, constant; 8,000 steps;
- 2 loader workers (a few hundred clips fit the page cache; more workers only add copies);
- a checkpoint, held-out loss and inference on the held-out clip (``data.val_video_path`` /
  ``val_audio_path``: the first line of ``val_files.txt`` written by ``python -m data_prep.split``)
  with its SyncNet score every 250 steps; metrics every 10 steps.

``configs/unet/finetune.py:tiny`` is the same recipe on the tiny test model (configs/unet/tiny.py,
random frozen networks, no audio caches, latent MSE only): the README walkthrough's test runs it
on the demo clips.
"""

import ml_collections

from lipsync_jax.config_utils import ConfigError, import_sibling

stage2 = import_sibling(__file__, "stage2.py")
tiny = import_sibling(__file__, "tiny.py")

STEPS = 8000           # LatentSync: 5,000-10,000 steps
LEARNING_RATE = 1e-6   # LatentSync: 1e-6 for fine-tuning
WARMUP_STEPS = 200
VALIDATE_EVERY = 250   # checkpoint + held-out loss + inference on the held-out clip


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "tiny"):
        raise ConfigError(f"configs/unet/finetune.py:{variant}: the variant must be empty or 'tiny'")
    if variant == "tiny":
        config = tiny.get_config()
        config.ckpt.resume_ckpt_path = ""  # the test passes its own starting checkpoint
        config.data.audio_embeds_cache_dir = ""
        config.data.audio_mel_cache_dir = ""
        config.data.num_workers = 0
        # the walkthrough test checks the mechanics, not the loss terms: latent MSE only (a much
        # smaller step to compile on a CPU)
        config.run.pixel_space_supervise = False
        config.run.use_syncnet = False
    else:
        config = stage2.get_config()
        config.data.num_workers = 2
    config.data.train_output_dir = "debug/unet_finetune"
    config.data.batch_size = 1
    config.optimizer.lr = LEARNING_RATE
    config.optimizer.lr_warmup_steps = WARMUP_STEPS
    config.optimizer.lr_scheduler = "constant"
    config.ckpt.save_ckpt_steps = VALIDATE_EVERY
    config.run.max_train_steps = STEPS
    config.run.val_inference = True
    config.run.val_max_seconds = 5.0
    return config
