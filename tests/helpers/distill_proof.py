"""The CPU proof of consistency distillation, as functions (tests/train/test_distill_proof.py runs them;
each step keeps its output in a folder and is skipped when the output is there, so a rerun with
``LIPSYNC_DISTILL_PROOF_DIR`` trains the teacher and the student once).

1. ``demo_dataset``: demo1 (10 s, scaled to 360x640) -> ``python -m data_prep`` at 64 px: one
   clip of 250 aligned faces with its 16 kHz audio (the path the fine-tune walkthrough takes).
2. ``frozen_networks``: a random tiny VAE as a converted folder (numpy draws: no init to
   compile; the tiny config has no trained VAE), calibrated on the clip to behave like a trained
   one in the two ways that matter here: a near-deterministic posterior (log-variance -20; a
   random encoder's posterior noise would swamp the faces) and scaled latents of zero mean and
   unit variance per channel (what the 0.18215 factor does for sd-vae-ft-mse). Whisper is the
   tiny config's random one (seeded by ``run.seed``) everywhere.
3. ``encode_clip``: every frame of the clip through that VAE once (target and masked latents, the
   mask on the latent grid) and its per-frame audio windows. With a posterior of log-variance -20
   an encoding per training step would give the same latents to 5e-5, for twice the step time.
4. ``train_teacher``: the tiny UNet (configs/unet/tiny.py's model) from random weights, every
   parameter, on random ``FRAMES``-frame windows of the clip with references from non-overlapping
   windows (LatentSync's sampling): ``UNetTrainer.denoise`` (stage 1/2's noise, timesteps and
   UNet input) and the latent MSE, with the project's AdamW (``make_optimizer``), warmup + cosine.
5. ``train_student``: ``DistillTrainer.latent_loss`` (the distill task's loss: the guided
   teacher's DDIM skip step, the EMA target, the consistency function) with configs/unet/
   distill.py:tiny's settings, the student starting from the teacher; ``TrainState`` keeps the
   EMA target. The distill task's loop, mesh, resume and export are tested in tests/train.
6. ``evaluate``: 48 frames of the clip (frames 100-147 in ``FRAMES``-frame windows: masked faces,
   reference faces 100 frames later, their audio windows) and held-out noise seeds; every
   program is ``sample_chunk`` (the one-jit scan infer.py runs): teacher DDIM 20 + CFG 1.5 (the
   reference), teacher DDIM 1/2/4/8 + CFG, student lcm 1/2/4/8.
7. ``latent_syncnet``: a tiny latent-space StableSyncNet (configs/syncnet/tiny_latent.py's model)
   trained on the clip's own latents (in-sync vs shifted audio) and ``sync_score`` (the eval
   scorer) of each 48-frame latent sequence: the faces are decoded by a random VAE here, so the
   sync score is taken where the networks are meaningful, in latent space.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.config_utils import PROJECT_ROOT, load_config, resolve_path

FRAMES = 2
TEACHER_STEPS, TEACHER_BATCH, TEACHER_LR = 1500, 8, 3e-3
STUDENT_STEPS, STUDENT_BATCH, STUDENT_LR = 500, 8, 2e-4
SYNCNET_STEPS = 300
EVAL_START, EVAL_FRAMES = 100, 48
REFERENCE_SHIFT = 100  # reference faces 100 frames after the target (frames 200-247)
EVAL_SEEDS = (101, 202)  # held out: training draws its noise from its own keys
STEPS = (1, 2, 4, 8)
GUIDANCE = 1.5


def _ffmpeg(*args: str) -> None:
    from lipsync_jax.media.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def demo_dataset(folder: str) -> str:
    out = os.path.join(folder, "clips")
    if os.path.isdir(os.path.join(out, "lipsync_clips")):
        return out
    videos = os.path.join(folder, "videos")
    os.makedirs(videos, exist_ok=True)
    _ffmpeg("-i", os.path.join(PROJECT_ROOT, "tests/data/assets/demo1_video.mp4"), "-vf", "scale=360:640",
            "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", os.path.join(videos, "demo1.mp4"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "data_prep", "--input_dir", videos, "--output_dir", out, "--resolution",
                    "64", "--num_workers", "0"], cwd=PROJECT_ROOT, env=env, check=True, capture_output=True)
    return out


def frozen_networks(folder: str, dataset: str) -> dict[str, str]:
    """The random tiny VAE's folder, calibrated on the clip (see the module docstring)."""
    from lipsync_jax.data.windows import to_pixels
    from lipsync_jax.models.vae import AutoencoderKL, abstract_params
    from lipsync_jax.train.unet_setup import _vae_config
    from lipsync_jax.tree_utils import random_params

    paths = {"vae": os.path.join(folder, "vae")}
    if os.path.isdir(paths["vae"]):
        return paths
    cfg = load_config(resolve_path("configs/unet/tiny.py")).to_dict()
    vae = AutoencoderKL.from_config(_vae_config(cfg))
    params = random_params(abstract_params(vae), seed=1)
    pixels = jnp.asarray(to_pixels(_clip(dataset)["frames"][::5]))  # 50 frames
    mean, _ = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=AutoencoderKL.encode))(params, pixels)
    mean = np.asarray(mean, np.float64).reshape(-1, mean.shape[-1])
    # quant_conv is 1x1 (linear): latent channel j -> (mean_j - mu_j) / (scale * sd_j); log-variance -20
    mu, sd = mean.mean(0), mean.std(0) * float(vae.config.scaling_factor)
    kernel, bias = np.array(params["quant_conv"]["kernel"]), np.array(params["quant_conv"]["bias"])
    latent = kernel.shape[-1] // 2
    kernel[..., :latent] /= sd
    bias[:latent] = (bias[:latent] - mu) / sd
    kernel[..., latent:], bias[latent:] = 0.0, -20.0
    params["quant_conv"] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    _save(paths["vae"], params)
    return paths


def _clip(dataset: str) -> dict[str, Any]:
    from lipsync_jax.data.records import ClipDataSource, decode_frames, record_to_float_audio

    record = ClipDataSource(dataset)[0]
    return {"frames": decode_frames(record["frames"], range(len(record["frames"]))),
            "audio": record_to_float_audio(record)}


class Models:
    """The tiny UNet module, the frozen VAE and the training steps' pieces (``parts.trainer``)."""

    def __init__(self, frozen: dict[str, str]):
        from lipsync_jax.checkpoints import restore_params
        from lipsync_jax.train.unet_setup import unet_parts

        self.overrides = [f"data.num_frames={FRAMES}", "run.use_syncnet=False", "run.pixel_space_supervise=False",
                          f"vae.ckpt_path={frozen['vae']}"]
        self.config = load_config(resolve_path("configs/unet/tiny.py"), self.overrides)
        self.parts = unet_parts(self.config)
        self.vae_params = jax.tree.map(jnp.asarray, restore_params(frozen["vae"])[0])

    def encode(self, pixels: np.ndarray, key: jax.Array) -> jax.Array:
        """(n, 64, 64, 3) pixels in [-1, 1] -> scaled latent samples (n, 8, 8, 4)."""
        return jax.jit(self.parts.trainer.encode)(self.vae_params, jnp.asarray(pixels)[None], key)[0]


# ---------------------------------------------------------------- the clip on the latent grid
class ClipLatents(NamedTuple):
    latents: jax.Array  # (n, h, w, 4) every frame, scaled posterior samples
    masked: jax.Array   # (n, h, w, 4) the masked frames'
    masks: jax.Array    # (n, h, w, 1) the mask channel
    audio: jax.Array    # (n, tokens, dim) each frame's audio window

    def windows(self, starts: jax.Array, ref_starts: jax.Array, frames: int) -> tuple[Any, jax.Array]:
        """(EncodedBatch of (b, frames, h, w, c), audio (b, frames, tokens, dim)) for window starts (b,)."""
        from lipsync_jax.train.unet_step import EncodedBatch

        idx, ref = starts[:, None] + jnp.arange(frames), ref_starts[:, None] + jnp.arange(frames)
        return EncodedBatch(self.latents[idx], self.masks[idx], self.masked[idx], self.latents[ref]), self.audio[idx]

    def sample(self, key: jax.Array, batch: int, frames: int) -> tuple[Any, jax.Array]:
        """Random target windows and reference windows that share no frame with them (LatentSync's
        ``sample_target_and_reference``, drawn without rejection)."""
        n = self.latents.shape[0] - frames + 1  # window starts 0 .. n - 1
        k_start, k_ref = jax.random.split(key)
        starts = jax.random.randint(k_start, (batch,), 0, n)
        lo, hi = jnp.maximum(starts - frames + 1, 0), jnp.minimum(starts + frames - 1, n - 1)  # overlapping starts
        ref = jax.random.randint(k_ref, (batch,), 0, n - (hi - lo + 1))
        return self.windows(starts, jnp.where(ref >= lo, ref + hi - lo + 1, ref), frames)


def encode_clip(models: Models, dataset: str) -> ClipLatents:
    from lipsync_jax.audio.features import gather_frame_windows
    from lipsync_jax.data.audio_features import WhisperFeatures
    from lipsync_jax.data.windows import apply_mask, audio_row_indices, to_pixels
    from lipsync_jax.diffusion.conditioning import latent_mask
    from lipsync_jax.face.mask import load_fixed_mask

    clip = _clip(dataset)
    n = len(clip["frames"])
    mask = load_fixed_mask(64, resolve_path(str(models.config.data.mask_image_path)))
    pixels = to_pixels(clip["frames"])
    masked_pixels, pixel_masks = apply_mask(pixels, mask)  # the loader's masked frames and mask channel
    latents = models.encode(pixels, jax.random.key(11))
    masked = models.encode(masked_pixels, jax.random.key(12))
    masks = latent_mask(jnp.asarray(pixel_masks)[None], latents.shape[1:3])[0]
    whisper = models.config.whisper  # the loader's random Whisper: "random:<run.seed>" with the config's dims
    embeddings = WhisperFeatures(f"random:{int(models.config.run.seed)}", dims=whisper.dims.to_dict())(clip["audio"])
    audio = gather_frame_windows(np.asarray(embeddings, np.float32), audio_row_indices(np.arange(n), len(embeddings)))
    return ClipLatents(latents, masked, masks, jnp.asarray(audio))


def _save(dst: str, params: Any) -> None:
    """``save_params`` to a sibling folder, renamed into place when complete: an interrupted step
    leaves no folder that a rerun would take for its finished output."""
    import shutil

    from lipsync_jax.checkpoints import save_params

    partial = dst + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_params(partial, params, None)
    os.replace(partial, dst)


# ---------------------------------------------------------------- training
def _restore(path: str) -> Any:
    from lipsync_jax.checkpoints import restore_params

    return jax.tree.map(jnp.asarray, restore_params(path)[0])


def _train(state: Any, loss_fn: Any, steps: int, label: str) -> tuple[Any, list[float]]:
    """``steps`` optimizer steps of ``loss_fn(params, ema_params, key) -> (loss, terms)`` (one
    jitted step, the state donated); returns the state and the loss every 50 steps."""
    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state):
        key = jax.random.fold_in(state.rng, state.step)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.ema_params, key)
        return state.apply_gradients(grads), loss

    losses, start = [], time.perf_counter()
    for i in range(steps):
        state, loss = step(state)
        if i % 50 == 49:
            losses.append(float(loss))
    print(f"{label}: {steps} steps in {time.perf_counter() - start:.0f} s, loss every 50 steps "
          f"{[round(x, 4) for x in losses]}", flush=True)
    return state, losses


def train_teacher(folder: str, models: Models, clip: ClipLatents) -> Any:
    """The teacher from random weights (numpy draws: no init to compile), every parameter trained
    (module docstring, step 4). Returns its params (kept in ``folder/teacher``)."""
    from lipsync_jax.train.state import TrainState, make_optimizer
    from tests.helpers.train import random_teacher

    dst = os.path.join(folder, "teacher")
    if os.path.isdir(dst):
        return _restore(dst)
    params = _restore(random_teacher(os.path.join(folder, "teacher_init"), "configs/unet/tiny.py"))
    tx, _ = make_optimizer(dict(lr=TEACHER_LR, lr_warmup_steps=50, lr_scheduler="cosine", max_grad_norm=1.0),
                           TEACHER_STEPS)
    trainer = models.parts.trainer

    def loss_fn(params, _ema, key):
        k_windows, k_noise, k_t = jax.random.split(key, 3)
        encoded, audio = clip.sample(k_windows, TEACHER_BATCH, FRAMES)
        noise, _, _, pred_noise = trainer.denoise(params, encoded, audio, k_noise, k_t)
        loss = jnp.mean(jnp.square(pred_noise - noise))
        return loss, {}

    state, _ = _train(TrainState.create(params, tx, jax.random.key(0)), loss_fn, TEACHER_STEPS, "teacher")
    _save(dst, state.params)
    return state.params


def distill_config() -> Any:
    return load_config(resolve_path("configs/unet/distill.py:tiny"),
                       [f"data.num_frames={FRAMES}", "run.use_syncnet=False", "run.pixel_space_supervise=False",
                        f"distill.guidance_scale={GUIDANCE}"])


def train_student(folder: str, models: Models, clip: ClipLatents, teacher: Any) -> Any:
    """The student from the teacher's weights (module docstring, step 5). Returns its params
    (kept in ``folder/student``)."""
    from lipsync_jax.train.distill_setup import distill_trainer
    from lipsync_jax.train.state import TrainState, make_optimizer

    dst = os.path.join(folder, "student")
    if os.path.isdir(dst):
        return _restore(dst)
    trainer = distill_trainer(distill_config())
    frozen = {"teacher": teacher, "vae": models.vae_params}
    tx, _ = make_optimizer(dict(lr=STUDENT_LR, lr_warmup_steps=20, lr_scheduler="constant", max_grad_norm=1.0),
                           STUDENT_STEPS)

    def loss_fn(params, ema_params, key):
        k_windows, k_noise, k_t = jax.random.split(key, 3)
        encoded, audio = clip.sample(k_windows, STUDENT_BATCH, FRAMES)
        return trainer.latent_loss(params, ema_params, frozen, encoded, audio, None, k_noise, k_t)

    state = TrainState.create(jax.tree.map(jnp.copy, teacher), tx, jax.random.key(1),
                              ema_decay=trainer.settings.ema_decay)
    state, _ = _train(state, loss_fn, STUDENT_STEPS, "student")
    _save(dst, state.params)
    return state.params


# ---------------------------------------------------------------- evaluation
def eval_windows(clip: ClipLatents) -> tuple[Any, jax.Array]:
    """EVAL_FRAMES frames from EVAL_START in FRAMES-frame windows, references REFERENCE_SHIFT later."""
    starts = jnp.arange(EVAL_START, EVAL_START + EVAL_FRAMES, FRAMES)
    return clip.windows(starts, starts + REFERENCE_SHIFT, FRAMES)


def sample_all(models: Models, teacher: Any, student: Any, clip: ClipLatents) -> dict[str, np.ndarray]:
    """Every program on every held-out seed: {name: (seeds, windows, f, h, w, 4)} (the seeds are
    one batch of one call per program)."""
    from lipsync_jax.diffusion import DDIMScheduler, ModuleApply, initial_latents, sample_chunk

    encoded, audio = eval_windows(clip)
    apply = ModuleApply(models.parts.unet)
    ddim = DDIMScheduler.from_config(models.config.scheduler.to_dict())
    runs = [("teacher_ddim20_cfg", teacher, "ddim", 20, GUIDANCE)]
    runs += [(f"teacher_ddim{k}_cfg", teacher, "ddim", k, GUIDANCE) for k in STEPS]
    runs += [(f"student_lcm{k}", student, "lcm", k, 1.0) for k in STEPS]
    seeds = len(EVAL_SEEDS)
    tile = lambda x: jnp.concatenate([x] * seeds)  # noqa: E731
    windows = encoded.gt_latents.shape[0]
    init = jnp.concatenate([initial_latents(k, encoded.gt_latents.shape)
                            for k in (jax.random.key(seed) for seed in EVAL_SEEDS)])
    out = {"init_noise": np.asarray(init)}
    for name, params, solver, steps, guidance in runs:
        start = time.perf_counter()
        latents = sample_chunk(apply, params, init, tile(encoded.masks), tile(encoded.masked_latents),
                               tile(encoded.ref_latents), tile(audio), scheduler=ddim, num_steps=steps,
                               guidance_scale=guidance, solver=solver,
                               noise_key=jax.random.key(EVAL_SEEDS[0] + 1) if solver == "lcm" else None)
        out[name] = np.asarray(latents)
        print(f"{name}: {time.perf_counter() - start:.1f} s (compile + run)", flush=True)
    return {name: value.reshape((seeds, windows) + value.shape[1:]) for name, value in out.items()}


def latent_mse(samples: dict[str, np.ndarray], clip: ClipLatents) -> dict[str, float]:
    """Mean squared latent error of every program against the teacher's 20-step CFG output, and
    of the reference itself (and the starting noise) against the clip's own latents."""
    reference = samples["teacher_ddim20_cfg"]
    gt = np.asarray(eval_windows(clip)[0].gt_latents)[None]
    out = {f"{name}_vs_teacher20": float(np.mean((value - reference) ** 2)) for name, value in samples.items()
           if name.startswith(("teacher_ddim", "student")) and name != "teacher_ddim20_cfg"}
    out["teacher20_vs_clip"] = float(np.mean((reference - gt) ** 2))
    out["noise_vs_clip"] = float(np.mean((samples["init_noise"] - gt) ** 2))
    out["clip_variance"] = float(np.var(gt))
    for k in STEPS:
        out[f"student_lcm{k}_vs_clip"] = float(np.mean((samples[f"student_lcm{k}"] - gt) ** 2))
    return out


# ---------------------------------------------------------------- sync score in latent space
def latent_syncnet(clip: ClipLatents, dataset: str, steps: int = SYNCNET_STEPS) -> tuple[Any, Any, dict]:
    """A tiny latent StableSyncNet trained on the clip's latents (all 250 frames): 16-frame
    windows with in-sync or shifted mel windows (LatentSync's SyncNet pairs). Returns (model,
    params, {"accuracy": last-50-step pair accuracy, "mel": the clip's mel})."""
    from lipsync_jax.audio.syncnet_mel import syncnet_mel
    from lipsync_jax.data.transforms import _mel_crop
    from lipsync_jax.data.windows import max_mel_start, sample_syncnet_windows
    from lipsync_jax.models.syncnet import StableSyncNet, abstract_params
    from lipsync_jax.train.state import TrainState, make_optimizer
    from lipsync_jax.train.syncnet_step import SyncNetTrainer
    from lipsync_jax.tree_utils import random_params

    config = load_config(resolve_path("configs/syncnet/tiny_latent.py"))
    model = StableSyncNet.from_config(config.model.to_dict())
    latents = np.asarray(clip.latents)  # (250, 8, 8, 4)
    mel = syncnet_mel(_clip(dataset)["audio"])
    trainer = SyncNetTrainer(model=model, lower_half=False)
    tx, _ = make_optimizer(dict(lr=3e-4, max_grad_norm=1.0), steps)
    state = TrainState.create(jax.tree.map(jnp.asarray, random_params(abstract_params(model), seed=3)), tx,
                              jax.random.key(4))
    step = jax.jit(lambda s, b: trainer.train_step(s, {}, b))
    rng = np.random.default_rng(5)
    last = max_mel_start(mel.shape[1], 16)
    accuracy = []
    for _ in range(steps):
        pairs = [sample_syncnet_windows(rng, len(latents), 16, last) for _ in range(16)]
        batch = {"frames": jnp.asarray(np.stack([latents[f:f + 16] for _, f, _ in pairs])),
                 "mel": jnp.asarray(np.stack([_mel_crop(mel, a, 16, 25.0) for a, _, _ in pairs])),
                 "labels": jnp.asarray([float(s) for _, _, s in pairs])}
        state, metrics = step(state, batch)
        accuracy.append(metrics["accuracy"])
    return model, state.params, {"accuracy": float(np.mean(jax.device_get(accuracy[-50:]))), "mel": mel}


def sync_scores(model: Any, params: Any, mel: np.ndarray, samples: dict[str, np.ndarray],
                clip: ClipLatents) -> dict[str, dict[str, float]]:
    """``sync_score`` (offsets +-15) of each 48-frame latent sequence against the clip's mel from
    frame EVAL_START on; the clip's own latents as the reference row; first held-out seed."""
    from lipsync_jax.eval.sync_score import sync_score

    first = int(80 * EVAL_START / 25)
    mel = mel[:, first:]
    sequences = {"clip latents": np.asarray(clip.latents[EVAL_START:EVAL_START + EVAL_FRAMES])}
    for name in ("teacher_ddim20_cfg", "teacher_ddim4_cfg", "teacher_ddim2_cfg", "student_lcm4", "student_lcm2",
                 "student_lcm1"):
        sequences[name] = samples[name][0].reshape((EVAL_FRAMES,) + samples[name].shape[3:])
    out = {}
    for name, latents in sequences.items():
        score = sync_score(model, params, latents, mel, max_offset=15, lower_half=False)
        out[name] = {"similarity_at_zero": score.similarity_at_zero, "best_offset": score.best_offset,
                     "confidence": score.confidence}
    return out


def run_proof(folder: str) -> dict[str, Any]:
    """Every step above (cached in ``folder``); returns the numbers (also written to
    ``folder/proof.json``)."""
    os.makedirs(folder, exist_ok=True)
    timings, start = {}, time.perf_counter()

    def lap(name):
        nonlocal start
        timings[name] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()

    dataset = demo_dataset(folder)
    frozen = frozen_networks(folder, dataset)
    lap("data_prep_and_vae")
    models = Models(frozen)
    clip = encode_clip(models, dataset)
    lap("encode_clip")
    teacher = train_teacher(folder, models, clip)
    lap("teacher")
    student = train_student(folder, models, clip, teacher)
    lap("student")
    samples = sample_all(models, teacher, student, clip)
    mse = latent_mse(samples, clip)
    lap("sampling")
    syncnet, syncnet_params, syncnet_info = latent_syncnet(clip, dataset)
    sync = sync_scores(syncnet, syncnet_params, syncnet_info["mel"], samples, clip)
    lap("syncnet")
    result = {"mse": mse, "syncnet_accuracy": syncnet_info["accuracy"], "sync": sync, "seconds": timings,
              "settings": dict(frames=FRAMES, teacher_steps=TEACHER_STEPS, teacher_batch=TEACHER_BATCH,
                               teacher_lr=TEACHER_LR, student_steps=STUDENT_STEPS, student_batch=STUDENT_BATCH,
                               student_lr=STUDENT_LR, syncnet_steps=SYNCNET_STEPS, guidance=GUIDANCE)}
    with open(os.path.join(folder, "proof.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result
