"""The CPU proof of consistency distillation, as functions (tests/train/test_distill_proof.py runs them;
each step keeps its output in a folder and is skipped when the output is there, so a session
trains the teacher and the student once).

1. ``demo_dataset``: demo1 (10 s, scaled to 360x640) -> ``python -m data_prep`` at 64 px: one
   clip of 250 aligned faces with its 16 kHz audio (the path the fine-tune walkthrough takes).
2. ``frozen_networks``: a random tiny VAE as a converted folder (numpy draws: no init to
   compile; the tiny config has no trained VAE), calibrated on the clip to behave like a trained
   one in the two ways that matter here: a near-deterministic posterior (log-variance -20; a
   random encoder's posterior noise would swamp the faces) and scaled latents of zero mean and
   unit variance per channel (what the 0.18215 factor does for sd-vae-ft-mse); shared by every
   step. Whisper is the tiny config's random one (``whisper.ckpt_path`` "", seeded by
   ``run.seed``) everywhere.
3. ``train_teacher``: the tiny UNet (configs/unet/tiny.py's model) trained from random weights on
   that clip through train.py's loop and the grain loader (latent MSE, every parameter, 4-frame
   windows), then exported.
4. ``train_student``: configs/unet/distill.py:tiny from that teacher (guidance 1.5 distilled in),
   exported (a student checkpoint).
5. ``evaluate``: 12 consecutive 4-frame windows of the clip (frames 100-147: the masked faces,
   reference faces 100 frames later as in training, where the reference never overlaps the
   target, and their audio windows) and held-out noise seeds; every program is ``sample_chunk``
   (the one-jit scan infer.py runs):
   teacher DDIM 20 + CFG 1.5 (the reference), teacher DDIM 1/2/4/8 + CFG, student lcm 1/2/4/8.
6. ``latent_syncnet``: a tiny latent-space StableSyncNet (configs/syncnet/tiny_latent.py's model)
   trained on the clip's own latents (in-sync vs shifted audio) and ``sync_score`` (the eval
   scorer) of each 48-frame latent sequence: the faces are decoded by a random VAE here, so the
   sync score is taken where the networks are meaningful, in latent space.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.config_utils import PROJECT_ROOT, load_config, resolve_path

FRAMES, BATCH = 4, 4
TEACHER_STEPS, STUDENT_STEPS = 600, 500
EVAL_START, EVAL_WINDOWS = 100, 12
REFERENCE_SHIFT = 100  # reference faces 100 frames after the target (frames 200-247)
EVAL_SEEDS = (101, 202)  # held out: training draws its noise from the run's own keys
STEPS = (1, 2, 4, 8)
GUIDANCE = 1.5
ALL_MODULES = "('conv_in.', 'time_embedding.', 'down_blocks.', 'mid_block.', 'up_blocks.', 'conv_norm_out.', " \
              "'conv_out.')"


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
    from lipsync_jax.checkpoints import save_params
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
    save_params(paths["vae"], params, None)
    return paths


def data_overrides(folder: str, dataset: str, frozen: dict[str, str]) -> list[str]:
    cache = os.path.join(folder, "feature_cache")
    return [f"data.train_data_dir={dataset}", f"data.num_frames={FRAMES}", f"data.batch_size={BATCH}",
            "data.num_workers=0", f"data.audio_embeds_cache_dir={cache}/embeds",
            f"data.audio_mel_cache_dir={cache}/mel", f"vae.ckpt_path={frozen['vae']}",
            "run.pixel_space_supervise=False", "run.use_syncnet=False",
            "run.val_inference=False", "run.log_every_steps=50", f"run.trainable_modules={ALL_MODULES}",
            # one checkpoint, at the end (a save step would also run the held-out loss: one more compile)
            "ckpt.save_ckpt_steps=1000000"]


def _train(config_path: str, overrides: list[str], workdir: str, dst: str) -> str:
    from lipsync_jax.train.export import export
    from lipsync_jax.train.loop import run_training
    from lipsync_jax.train.tasks import build_task

    if os.path.isdir(dst):
        return dst
    config = load_config(resolve_path(config_path), overrides)
    run_training(build_task(config, "grain"), config, workdir, progress=False)
    return export(workdir, dst, config)


def train_teacher(folder: str, dataset: str, frozen: dict[str, str]) -> str:
    """The teacher from random weights (numpy draws: no init to compile), every parameter trained."""
    from tests.helpers.train import random_teacher

    start = os.path.join(folder, "teacher_init")
    if not os.path.isdir(os.path.join(start, "teacher")):
        random_teacher(start, "configs/unet/tiny.py")
    overrides = data_overrides(folder, dataset, frozen) + [
        f"ckpt.resume_ckpt_path={start}/teacher", "optimizer.lr=1e-3", "optimizer.lr_warmup_steps=50",
        "optimizer.lr_scheduler=cosine", f"run.max_train_steps={TEACHER_STEPS}"]
    return _train("configs/unet/tiny.py", overrides, os.path.join(folder, "teacher_run"),
                  os.path.join(folder, "teacher"))


def train_student(folder: str, dataset: str, frozen: dict[str, str], teacher: str) -> str:
    overrides = data_overrides(folder, dataset, frozen) + [
        f"distill.teacher_ckpt_path={teacher}", f"distill.guidance_scale={GUIDANCE}", "optimizer.lr=2e-4",
        "optimizer.lr_warmup_steps=20", f"run.max_train_steps={STUDENT_STEPS}"]
    return _train("configs/unet/distill.py:tiny", overrides, os.path.join(folder, "student_run"),
                  os.path.join(folder, "student"))


# ---------------------------------------------------------------- evaluation
def _clip(dataset: str) -> dict[str, Any]:
    from lipsync_jax.data.records import ClipDataSource, decode_frames, record_to_float_audio

    record = ClipDataSource(dataset)[0]
    return {"frames": decode_frames(record["frames"], range(len(record["frames"]))),
            "audio": record_to_float_audio(record)}


class Models:
    """The tiny UNet module, the frozen VAE and the helpers of the training step."""

    def __init__(self, frozen: dict[str, str]):
        from lipsync_jax.checkpoints import restore_params
        from lipsync_jax.train.unet_setup import unet_parts

        self.config = load_config(resolve_path("configs/unet/tiny.py"),
                                  [f"data.num_frames={FRAMES}", "run.use_syncnet=False",
                                   "run.pixel_space_supervise=False", f"vae.ckpt_path={frozen['vae']}"])
        self.parts = unet_parts(self.config)
        self.vae_params = jax.tree.map(jnp.asarray, restore_params(frozen["vae"])[0])

    def encode(self, frames_uint8: np.ndarray, key: jax.Array) -> jax.Array:
        """(n, 64, 64, 3) uint8 -> scaled latent samples (n, 8, 8, 4)."""
        from lipsync_jax.data.windows import to_pixels

        pixels = jnp.asarray(to_pixels(frames_uint8))[None]
        return jax.jit(self.parts.trainer.encode)(self.vae_params, pixels, key)[0]


def eval_windows(models: Models, dataset: str) -> dict[str, jax.Array]:
    """EVAL_WINDOWS consecutive FRAMES-frame windows from EVAL_START (masked faces, reference faces
    REFERENCE_SHIFT frames later, per-frame audio windows)."""
    from lipsync_jax.audio.features import gather_frame_windows
    from lipsync_jax.data.audio_features import WhisperFeatures
    from lipsync_jax.data.windows import apply_mask, audio_row_indices, to_pixels
    from lipsync_jax.face.mask import load_fixed_mask

    clip = _clip(dataset)
    n = EVAL_WINDOWS * FRAMES
    indices = np.arange(EVAL_START, EVAL_START + n)
    pixels = to_pixels(clip["frames"][indices])
    reference = to_pixels(clip["frames"][indices + REFERENCE_SHIFT])
    masked, masks = apply_mask(pixels, load_fixed_mask(64, resolve_path(str(models.config.data.mask_image_path))))
    whisper = models.config.whisper  # the loader's random Whisper: "random:<run.seed>" with the config's dims
    embeddings = WhisperFeatures(f"random:{int(models.config.run.seed)}", dims=whisper.dims.to_dict())(clip["audio"])
    audio = gather_frame_windows(np.asarray(embeddings, np.float32), audio_row_indices(indices, len(embeddings)))
    shape = lambda x: jnp.asarray(x).reshape((EVAL_WINDOWS, FRAMES) + x.shape[1:])  # noqa: E731
    batch = {"gt_frames": shape(pixels), "masked_frames": shape(masked), "ref_frames": shape(reference),
             "masks": shape(masks), "audio_embeds": shape(audio)}
    keys = tuple(jax.random.split(jax.random.key(7), 3))
    encoded = jax.jit(models.parts.trainer.encode_batch)(models.vae_params, batch, keys)
    return {"latents": encoded.gt_latents, "masks": encoded.masks, "masked": encoded.masked_latents,
            "ref": encoded.ref_latents, "audio": batch["audio_embeds"]}


def sample_all(models: Models, teacher: Any, student: Any, windows: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Every program on every held-out seed: {name: (seeds, windows, f, h, w, 4)}."""
    from lipsync_jax.diffusion import DDIMScheduler, ModuleApply, initial_latents, sample_chunk

    apply = ModuleApply(models.parts.unet)
    ddim = DDIMScheduler.from_config(models.config.scheduler.to_dict())
    runs = [("teacher_ddim20_cfg", teacher, "ddim", 20, GUIDANCE)]
    runs += [(f"teacher_ddim{k}_cfg", teacher, "ddim", k, GUIDANCE) for k in STEPS]
    runs += [(f"student_lcm{k}", student, "lcm", k, 1.0) for k in STEPS]
    out: dict[str, list] = {name: [] for name, *_ in runs}
    shape = windows["latents"].shape
    for seed in EVAL_SEEDS:
        keys = jax.random.split(jax.random.key(seed), EVAL_WINDOWS + 1)
        init = jnp.concatenate([initial_latents(keys[i], (1,) + shape[1:]) for i in range(EVAL_WINDOWS)])
        for name, params, solver, steps, guidance in runs:
            latents = sample_chunk(apply, params, init, windows["masks"], windows["masked"], windows["ref"],
                                   windows["audio"], scheduler=ddim, num_steps=steps, guidance_scale=guidance,
                                   solver=solver, noise_key=keys[-1] if solver == "lcm" else None)
            out[name].append(np.asarray(latents))
        out.setdefault("init_noise", []).append(np.asarray(init))
    return {name: np.stack(values) for name, values in out.items()}


def latent_mse(samples: dict[str, np.ndarray], windows: dict[str, jax.Array]) -> dict[str, float]:
    """Mean squared latent error of every program against the teacher's 20-step CFG output, and
    of the reference itself (and the starting noise) against the clip's own latents."""
    reference = samples["teacher_ddim20_cfg"]
    gt = np.asarray(windows["latents"])[None]
    out = {f"{name}_vs_teacher20": float(np.mean((value - reference) ** 2)) for name, value in samples.items()
           if name.startswith(("teacher_ddim", "student")) and name != "teacher_ddim20_cfg"}
    out["teacher20_vs_clip"] = float(np.mean((reference - gt) ** 2))
    out["noise_vs_clip"] = float(np.mean((samples["init_noise"] - gt) ** 2))
    out["clip_variance"] = float(np.var(gt))
    for k in STEPS:
        out[f"student_lcm{k}_vs_clip"] = float(np.mean((samples[f"student_lcm{k}"] - gt) ** 2))
    return out


# ---------------------------------------------------------------- sync score in latent space
def latent_syncnet(models: Models, dataset: str, folder: str, steps: int = 300) -> tuple[Any, Any, dict]:
    """A tiny latent StableSyncNet trained on the clip's latents (all 250 frames, posterior
    samples): 16-frame windows with in-sync or shifted mel windows (LatentSync's SyncNet pairs).
    Returns (model, params, {"accuracy": last-50-step pair accuracy})."""
    from lipsync_jax.audio.syncnet_mel import syncnet_mel
    from lipsync_jax.data.transforms import _mel_crop
    from lipsync_jax.data.windows import max_mel_start, sample_syncnet_windows
    from lipsync_jax.models.syncnet import StableSyncNet, abstract_params
    from lipsync_jax.train.state import TrainState, make_optimizer
    from lipsync_jax.train.syncnet_step import SyncNetTrainer
    from lipsync_jax.tree_utils import random_params

    config = load_config(resolve_path("configs/syncnet/tiny_latent.py"))
    model = StableSyncNet.from_config(config.model.to_dict())
    clip = _clip(dataset)
    latents = np.asarray(models.encode(clip["frames"], jax.random.key(11)))  # (250, 8, 8, 4)
    mel = syncnet_mel(clip["audio"])
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
        accuracy.append(float(metrics["accuracy"]))
    return model, state.params, {"accuracy": float(np.mean(accuracy[-50:])), "mel": mel}


def sync_scores(model: Any, params: Any, mel: np.ndarray, samples: dict[str, np.ndarray],
                windows: dict[str, jax.Array]) -> dict[str, dict[str, float]]:
    """``sync_score`` (offsets +-15) of each 48-frame latent sequence against the clip's mel from
    frame EVAL_START on; the clip's own latents as the reference row; first held-out seed."""
    from lipsync_jax.eval.sync_score import sync_score

    first = int(80 * EVAL_START / 25)
    mel = mel[:, first:]
    sequences = {"clip latents": np.asarray(windows["latents"])}
    for name in ("teacher_ddim20_cfg", "teacher_ddim4_cfg", "teacher_ddim2_cfg", "student_lcm4", "student_lcm2",
                 "student_lcm1"):
        sequences[name] = samples[name][0]
    out = {}
    for name, latents in sequences.items():
        frames = latents.reshape((-1,) + latents.shape[2:])
        score = sync_score(model, params, frames, mel, max_offset=15, lower_half=False)
        out[name] = {"similarity_at_zero": score.similarity_at_zero, "best_offset": score.best_offset,
                     "confidence": score.confidence}
    return out


def run_proof(folder: str) -> dict[str, Any]:
    """Every step above (cached in ``folder``); returns the numbers (also written to
    ``folder/proof.json``)."""
    from lipsync_jax.checkpoints import restore_params

    os.makedirs(folder, exist_ok=True)
    dataset = demo_dataset(folder)
    frozen = frozen_networks(folder, dataset)
    teacher_dir = train_teacher(folder, dataset, frozen)
    student_dir = train_student(folder, dataset, frozen, teacher_dir)
    models = Models(frozen)
    teacher = jax.tree.map(jnp.asarray, restore_params(teacher_dir)[0])
    student = jax.tree.map(jnp.asarray, restore_params(student_dir)[0])
    windows = eval_windows(models, dataset)
    samples = sample_all(models, teacher, student, windows)
    mse = latent_mse(samples, windows)
    syncnet, syncnet_params, syncnet_info = latent_syncnet(models, dataset, folder)
    result = {"mse": mse, "syncnet_accuracy": syncnet_info["accuracy"],
              "sync": sync_scores(syncnet, syncnet_params, syncnet_info["mel"], samples, windows),
              "teacher": teacher_dir, "student": student_dir}
    with open(os.path.join(folder, "proof.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result
