"""Train LatentSync's UNet (stage 1 / stage 2), its SyncNet, or a consistency-distilled student.

    python train.py --config=configs/unet/stage1.py --workdir=runs/stage1

Every option: ``python train.py --help`` and docs/training.md. The command itself lives in
lipsync_jax/train/cli.py (also installed as ``lipsync-train``).
"""

from lipsync_jax.train.cli import entry

if __name__ == "__main__":
    entry()
