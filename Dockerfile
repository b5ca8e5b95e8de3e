# lipsync-jax web app + API on an NVIDIA GPU (JAX with CUDA 12 from pip wheels: the host needs
# only the NVIDIA driver and the container toolkit).
#   docker build -t lipsync-jax .
#   docker run --gpus all -p 7860:7860 -v $PWD/checkpoints:/checkpoints -v lipsync-cache:/cache lipsync-jax
# Mount the converted weights at /checkpoints/jax/{unet,vae,whisper} (python -m lipsync_jax.convert ...).
# tests/project/test_deploy.py keeps this file in step with requirements.txt and app.py.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    JAX_COMPILATION_CACHE_DIR=/cache/xla

# libGL/glib for OpenCV (mediapipe's opencv-contrib-python); curl for the healthcheck.
# ffmpeg comes with imageio-ffmpeg (requirements.txt).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# exactly the project's pins, then the CUDA build of the jax version they resolved to
COPY requirements.txt ./
RUN pip install -r requirements.txt \
    && pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"

COPY . .
RUN pip install --no-deps -e .

EXPOSE 7860
VOLUME ["/cache"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD curl -fsS http://127.0.0.1:7860/ >/dev/null || exit 1

CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860", \
     "--config", "configs/unet/stage2.py", \
     "--checkpoint", "/checkpoints/jax/unet", \
     "--vae_checkpoint", "/checkpoints/jax/vae", \
     "--whisper_checkpoint", "/checkpoints/jax/whisper", \
     "--avatar_cache", "/cache/avatars", \
     "--compile_cache", "/cache/xla", \
     "--warmup"]
