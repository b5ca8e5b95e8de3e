"""Lip-sync a video to an audio track with LatentSync (JAX).

    python infer.py --video input.mp4 --audio speech.wav --output out.mp4 \\
        --checkpoint checkpoints/jax/unet --vae_checkpoint checkpoints/jax/vae \\
        --whisper_checkpoint checkpoints/jax/whisper [--config configs/unet/stage2.py]

Every option: ``python infer.py --help`` and docs/inference.md. The command itself lives in
lipsync_jax/serving/infer_cli.py (also installed as ``lipsync-infer``).
"""

from lipsync_jax.device_memory import configure_gpu_memory

configure_gpu_memory()  # before JAX's backend starts: grow on demand instead of preallocating 75% of the GPU

from lipsync_jax.serving.infer_cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
