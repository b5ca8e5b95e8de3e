"""Cog predictor (https://cog.run): ``cog predict -i video=@in.mp4 -i audio=@speech.wav``.

``setup()`` loads the models and compiles the device program once per container (weights from
``LIPSYNC_CHECKPOINTS``, default ./checkpoints/jax/{unet,vae,whisper}; config from
``LIPSYNC_CONFIG``, default configs/unet/stage2.py; ``LIPSYNC_RANDOM_INIT=1`` runs with random
weights for smoke tests; ``LIPSYNC_MAX_VRAM`` a memory budget in GB); ``predict()`` runs one job
through the same service as the web app and batch jobs (lipsync_jax/serving/service.py) and
returns the mp4. Face tracks are cached per video in ``LIPSYNC_AVATAR_CACHE`` (default
/tmp/lipsync_avatars), so repeated avatars are faster. A consistency-distilled student UNet
(docs/distillation.md) samples with its own scheduler, steps and built-in guidance unless the
inputs set them.
"""

from __future__ import annotations

import os
import tempfile

from cog import BasePredictor, Input, Path

ROOT = os.path.dirname(os.path.abspath(__file__))


class Predictor(BasePredictor):
    def setup(self) -> None:
        from lipsync_jax.pipeline.job import RunOptions
        from lipsync_jax.serving.service import LipsyncService

        checkpoints = os.environ.get("LIPSYNC_CHECKPOINTS", os.path.join(ROOT, "checkpoints", "jax"))
        config = os.environ.get("LIPSYNC_CONFIG", os.path.join(ROOT, "configs", "unet", "stage2.py"))
        run = RunOptions(compile_cache=os.environ.get("LIPSYNC_COMPILE_CACHE"),
                         max_vram_gb=os.environ.get("LIPSYNC_MAX_VRAM"))
        self.service = LipsyncService.from_config(
            config, unet_checkpoint=os.path.join(checkpoints, "unet"), vae_checkpoint=os.path.join(checkpoints, "vae"),
            whisper_checkpoint=os.path.join(checkpoints, "whisper"),
            random_init=os.environ.get("LIPSYNC_RANDOM_INIT", "") == "1", run=run,
            avatar_cache=os.environ.get("LIPSYNC_AVATAR_CACHE", os.path.join(tempfile.gettempdir(), "lipsync_avatars")),
            log=print)
        if os.environ.get("LIPSYNC_WARMUP", "1") == "1":
            steps = os.environ.get("LIPSYNC_WARMUP_STEPS")
            sampling = self.service.defaults.sampling
            if steps:
                from dataclasses import replace

                sampling = replace(sampling, steps=steps)
            self.service.compile(sampling)

    def predict(
        self,
        video: Path = Input(description="Video with a face (any common format)"),
        audio: Path = Input(description="Speech audio (wav, mp3, m4a, or a video's sound track)"),
        guidance_scale: float | None = Input(description="Audio guidance scale (default: the config's, 1.5; a "
                                             "distilled student's is built in)", default=None, ge=1.0, le=3.0),
        inference_steps: int | None = Input(description="Denoising steps (default: the config's, 20; a distilled "
                                            "student's own)", default=None, ge=1, le=50),
        seed: int = Input(description="Random seed", default=1247, ge=0, le=2 ** 32 - 1),
        max_seconds: float = Input(description="Only the first seconds of the audio (0 = all)", default=0.0, ge=0.0),
    ) -> Path:
        output = os.path.join(tempfile.mkdtemp(prefix="lipsync_predict_"), "lipsync.mp4")
        request = self.service.parse(str(video), str(audio), output, dict(
            guidance=guidance_scale, steps=inference_steps, seed=seed, max_seconds=max_seconds or None))
        return Path(self.service.run(request).output_path)
