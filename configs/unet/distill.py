"""Consistency distillation (LCM) of LatentSync's UNet into a few-step student that runs without
classifier-free guidance: one UNet call per sampling step, 2-4 steps instead of 20 x 2.
Recipe, compute and evaluation: docs/distillation.md.

configs/unet/stage2.py (LatentSync 1.5's 256 px UNet; ``:512`` is stage2_512.py, LatentSync 1.6)
plus a ``distill`` section (``lipsync_jax.train.distill_step``):

- ``teacher_ckpt_path``: the teacher UNet (the official ``checkpoints/latentsync_unet.pt``,
  converted on the fly, or a converted / exported folder). The student starts from the same
  weights (``ckpt.resume_ckpt_path`` "" = the teacher's), as LCM does.
- ``student_steps``: the sampling steps the student is meant for (recorded in its metadata and
  the default of ``--steps`` for it); the same student samples with 1, 2, 4 or 8 lcm steps.
- ``origin_steps`` 50: LCM's skip-step schedule, teacher DDIM steps of k = 1000 / 50 = 20
  timesteps (19, 39, ..., 999), one drawn per clip.
- Guidance: ``guidance`` "fixed" at ``guidance_scale`` (the config's ``run.guidance_scale``,
  1.5): the target is the teacher's classifier-free-guided DDIM step at that one scale, so the
  student needs no guidance input. Chosen over a guidance-scale embedding (LCM's w-condition)
  because the student keeps the UNet's parameter tree exactly (official and converted weights
  load into it, the exported student loads wherever a teacher does, no new module to initialise)
  and because LatentSync is run at one scale (1.5 in 1.6, 2.0 in 1.5), not swept per video; the
  cost is one distillation per scale, and the scale is in the student's metadata.
- ``teacher_solver`` "ddim": LCM's default solver. DPM-Solver++'s first order is the same step;
  its second order needs either the previous step's output (multistep; a distillation step has
  no previous step) or a second teacher call per skip step (single-step 2S: +50 % UNet work per
  training step) for a 20-timestep skip where DDIM's error is already small.
- ``ema_decay`` 0.95: the target network is an EMA of the student (LCM's rate); it lives in the
  train state (``TrainState.ema_params``: checkpointed, resumed, sharded like the params).
- ``loss`` "huber" (pseudo-Huber, ``huber_c`` 0.001) as LCM's released recipe; "l2" for MSE.
- ``sigma_data`` / ``timestep_scaling``: LCM's boundary condition (0.5, 10).

Trained parameters: every module of the UNet (``run.trainable_modules`` lists all of them), full
weights, no low-rank adapter. An adapter (LCM-LoRA) would save optimizer memory but not a single
FLOP of the step, and it would change the parameter tree (an adapter to merge or to carry through
every loader); the full student fits on 8 x 80 GB or a TPU slice with FSDP (docs/distillation.md),
and consistency distillation changes the network's time dependence, which lives in the resnets
that stage 2 keeps frozen. ``run.trainable_modules=("motion_modules.", "attentions.")`` trains
stage 2's subset instead, if memory is short.

Loss terms: ``consistency``, and ``sync`` as stage 2 computes it (pixel StableSyncNet on the VAE-
decoded prediction, weight ``run.sync_loss_weight`` 0.05); LPIPS and TREPA are off (weights 0:
their targets are the ground-truth frames, not the teacher's trajectory). Validation by inference
(``run.val_inference``) is off: it samples with DDIM and guidance, not the student's lcm sampler.

``configs/unet/distill.py:tiny``: the same on the tiny test model (configs/unet/tiny.py, random
teacher and frozen networks unless paths are given), for tests and CPU smoke runs.
"""

import ml_collections

from lipsync_jax.config_utils import ConfigError, import_sibling

stage2 = import_sibling(__file__, "stage2.py")
stage2_512 = import_sibling(__file__, "stage2_512.py")
tiny = import_sibling(__file__, "tiny.py")

STUDENT_STEPS = 4
STEPS = 8000            # LCM distils Stable Diffusion in 4,000 iterations; video clips get twice that
LEARNING_RATE = 1e-5    # LatentSync's stage-2 rate
WARMUP_STEPS = 500
# every top-level module of the UNet, in LatentSync's dotted spelling: all parameters are trained
ALL_UNET_MODULES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "up_blocks.", "conv_norm_out.",
                    "conv_out.")


def distill_section(guidance_scale: float, teacher_ckpt_path: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        teacher_ckpt_path=teacher_ckpt_path,
        student_steps=STUDENT_STEPS,
        origin_steps=50,
        guidance="fixed",
        guidance_scale=float(guidance_scale),
        teacher_solver="ddim",
        ema_decay=0.95,
        loss="huber",
        huber_c=0.001,
        sigma_data=0.5,
        timestep_scaling=10.0,
    ))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "512", "tiny"):
        raise ConfigError(f"configs/unet/distill.py:{variant}: the variant must be empty, '512' or 'tiny'")
    if variant == "tiny":
        config = tiny.get_config()
        config.data.train_output_dir = "debug/unet_distill_tiny"
        teacher = ""  # random teacher: tests and smoke runs pass their own
    else:
        config = stage2_512.get_config() if variant == "512" else stage2.get_config()
        config.data.train_output_dir = "debug/unet_distill"
        teacher = "checkpoints/latentsync_unet.pt"
        config.optimizer.lr = LEARNING_RATE
        config.optimizer.lr_warmup_steps = WARMUP_STEPS
        config.run.max_train_steps = STEPS
    config.distill = distill_section(config.run.guidance_scale, teacher)
    config.ckpt.resume_ckpt_path = ""  # the student starts from the teacher
    config.run.trainable_modules = ALL_UNET_MODULES
    config.run.perceptual_loss_weight = 0.0
    config.run.trepa_loss_weight = 0.0
    config.run.val_inference = False
    return config
