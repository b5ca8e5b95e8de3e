"""Running train.py in subprocesses (XLA device-count flags must be set before jax starts)."""

import os
import subprocess
import sys

from lipsync_jax.config_utils import PROJECT_ROOT
from lipsync_jax.train.metrics import read_metrics

TRAIN = os.path.join(PROJECT_ROOT, "train.py")
# tiny.py, cut down to what these tests check: 4 frames, no pixel-space losses, batch 4
# (divisible by the data axis of a (4, 2) mesh and by two processes). conv_out joins the
# trainable modules: with random weights it is zero-initialised, and frozen it would block
# every gradient (LatentSync's stage 2 starts from a trained stage-1 UNet instead).
TINY_FAST = ["--config=configs/unet/tiny.py", "--config.data.num_frames=4", "--config.data.batch_size=4",
             "--config.run.pixel_space_supervise=False", "--config.run.use_syncnet=False",
             "--config.optimizer.lr=1e-3",
             "--config.run.trainable_modules=('motion_modules.', 'attentions.', 'conv_out')",
             "--noprogress"]


def train_env(cache_dir, devices=None):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def run_train(workdir, args, cache_dir, devices=None, timeout=1800, check=True):
    cmd = [sys.executable, TRAIN, f"--workdir={workdir}", *args]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=train_env(cache_dir, devices), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def start_train(workdir, args, cache_dir, devices=None):
    cmd = [sys.executable, TRAIN, f"--workdir={workdir}", *args]
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=train_env(cache_dir, devices), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def losses(workdir, key="loss"):
    return {r["step"]: r[key] for r in read_metrics(str(workdir)) if key in r}


def random_teacher(folder, config_path):
    """A converted-weights folder with a random UNet of the config's model (numpy draws, nothing
    compiled): the frozen teacher of distillation tests. Returns its path."""
    from lipsync_jax.checkpoints import save_params
    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params
    from lipsync_jax.models.unet_config import UNet3DConfig
    from lipsync_jax.train.unet_setup import INIT_SHAPE
    from lipsync_jax.tree_utils import random_params

    config = load_config(resolve_path(config_path))
    unet = UNet3DConditionModel(UNet3DConfig.from_dict(config.model.to_dict()))
    params = random_params(abstract_params(unet, INIT_SHAPE + (unet.config.in_channels,)), seed=0)
    return save_params(os.path.join(str(folder), "teacher"), params, config.model.to_dict(),
                       {"source": "random tiny teacher (test)"})
