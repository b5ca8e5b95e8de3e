"""Cog predictor (https://cog.run): ``cog predict -i video=@in.mp4 -i audio=@speech.wav``.

``setup()`` loads the models and compiles the device program once per container (weights from
``LIPSYNC_CHECKPOINTS``, default ./checkpoints/jax/{unet,vae,whisper}; config from
``LIPSYNC_CONFIG``, default configs/unet/stage2.py; ``LIPSYNC_RANDOM_INIT=1`` runs with random
weights for smoke tests); ``predict()`` runs one job through the same service as the web app and
batch jobs (lipsync_jax/serving.py) and returns the mp4. Face tracks are cached per video in
``LIPSYNC_AVATAR_CACHE`` (default /tmp/lipsync_avatars), so repeated avatars are faster.
"""

from __future__ import annotations

import os
import tempfile

from cog import BasePredictor, Input, Path

ROOT = os.path.dirname(os.path.abspath(__file__))


class Predictor(BasePredictor):
    def setup(self) -> None:
        from lipsync_jax.pipeline import enable_compile_cache
        from lipsync_jax.serving import LipsyncService

        checkpoints = os.environ.get("LIPSYNC_CHECKPOINTS", os.path.join(ROOT, "checkpoints", "jax"))
        config = os.environ.get("LIPSYNC_CONFIG", os.path.join(ROOT, "configs", "unet", "stage2.py"))
        enable_compile_cache(os.environ.get("LIPSYNC_COMPILE_CACHE"))
        self.service = LipsyncService.from_config(
            config, unet_checkpoint=os.path.join(checkpoints, "unet"), vae_checkpoint=os.path.join(checkpoints, "vae"),
            whisper_checkpoint=os.path.join(checkpoints, "whisper"),
            random_init=os.environ.get("LIPSYNC_RANDOM_INIT", "") == "1",
            avatar_cache=os.environ.get("LIPSYNC_AVATAR_CACHE", os.path.join(tempfile.gettempdir(), "lipsync_avatars")))
        if os.environ.get("LIPSYNC_WARMUP", "1") == "1":
            self.service.compile(steps=int(os.environ.get("LIPSYNC_WARMUP_STEPS", self.service.defaults["steps"])))

    def predict(
        self,
        video: Path = Input(description="Video with a face (any common format)"),
        audio: Path = Input(description="Speech audio (wav, mp3, m4a, or a video's sound track)"),
        guidance_scale: float = Input(description="Audio guidance scale", default=1.5, ge=1.0, le=3.0),
        inference_steps: int = Input(description="Denoising steps", default=20, ge=1, le=50),
        seed: int = Input(description="Random seed", default=1247),
        max_seconds: float = Input(description="Only the first seconds of the audio (0 = all)", default=0.0, ge=0.0),
    ) -> Path:
        from lipsync_jax.serving import ServiceJob

        output = os.path.join(tempfile.mkdtemp(prefix="lipsync_predict_"), "lipsync.mp4")
        result = self.service.run(ServiceJob(str(video), str(audio), output, seed=int(seed),
                                             guidance=float(guidance_scale), steps=int(inference_steps),
                                             max_seconds=float(max_seconds) or None))
        return Path(result.output_path)
