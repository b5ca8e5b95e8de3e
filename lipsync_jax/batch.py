"""``python -m lipsync_jax.batch JOBS.csv [flags]``: the batch command (lipsync_jax/serving/batch.py)."""

from lipsync_jax.serving.batch import entry

if __name__ == "__main__":
    entry()
