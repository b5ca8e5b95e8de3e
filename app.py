"""Lip sync as a web page and an HTTP API (Gradio).

    python app.py --config configs/unet/stage2.py --checkpoint checkpoints/jax/unet \\
        --vae_checkpoint checkpoints/jax/vae --whisper_checkpoint checkpoints/jax/whisper [--max_vram 8]
    python app.py --config configs/unet/tiny.py --random_init     # smoke test: meaningless output
    python app.py --live ...                                        # live mode's server instead

Every option: ``python app.py --help`` and docs/serving.md. The app lives in
lipsync_jax/serving/webapp.py (also installed as ``lipsync-app``).
"""

from lipsync_jax.device_memory import configure_gpu_memory

configure_gpu_memory()  # before JAX's backend starts: grow on demand instead of preallocating 75% of the GPU

from lipsync_jax.serving.webapp import entry  # noqa: E402

if __name__ == "__main__":
    entry()
