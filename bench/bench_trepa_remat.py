"""Compiled memory of grad-through-TREPA for the full VideoMAEv2-giant, with and without remat.

    python bench/bench_trepa_remat.py [--batch 1] [--dtype bfloat16] [--param-dtype float32]

Nothing is run and no weights are allocated. Two numbers per setting:
  * residuals: what JAX's autodiff keeps from the forward pass for the backward pass (the
    leaves of the ``jax.vjp`` closure, from ``jax.eval_shape``): backend independent, and what
    remat changes;
  * XLA's ``memory_analysis()`` of the compiled gradient (arguments, temporaries). On GPU this
    is the real device footprint. XLA's CPU backend does not keep remat's recomputation (its
    temp size is the same with and without remat, even for a toy jax.checkpoint chain), so on
    CPU only the residual numbers show the saving.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import jax
import jax.numpy as jnp

from lipsync_jax.losses.trepa import TREPALoss
from lipsync_jax.models.videomae import VideoMAEConfig, VideoMAEv2

GIANT = {"model": "vit_giant_patch14_224", "all_frames": 16, "tubelet_size": 2, "use_mean_pooling": True}
GIB = 1024 ** 3


def measure(config: VideoMAEConfig, batch: int, frame_size: int, dtype, param_dtype, remat: bool) -> dict:
    model = VideoMAEv2(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
    loss = TREPALoss(model)
    clip = jax.ShapeDtypeStruct((batch, config.all_frames, frame_size, frame_size, 3), jnp.float32)
    model_input = jax.ShapeDtypeStruct((1, config.all_frames, config.img_size, config.img_size, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), model_input)["params"]
    vjp_fn = jax.eval_shape(lambda p, fake, real: jax.vjp(lambda x: loss(p, x, real), fake)[1], params, clip, clip)
    residual_bytes = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(vjp_fn))
    weight_bytes = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    grad_fn = jax.jit(jax.grad(loss, argnums=1))
    start = time.perf_counter()
    compiled = grad_fn.lower(params, clip, clip).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    result = {f: int(getattr(stats, f, 0) or 0) for f in fields}
    result["peak_estimate_bytes"] = (result["argument_size_in_bytes"] + result["output_size_in_bytes"]
                                     + result["temp_size_in_bytes"] - result["alias_size_in_bytes"])
    result.update(remat=remat, compile_s=round(seconds, 1), residual_bytes=residual_bytes,
                  residual_activation_bytes=residual_bytes - weight_bytes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="clips per loss call (16 frames each)")
    parser.add_argument("--frame-size", type=int, default=256, help="generated frame side before the resize to 224")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype of the ViT")
    parser.add_argument("--param-dtype", default="bfloat16", help="dtype the frozen weights are held in")
    args = parser.parse_args()
    config = VideoMAEConfig.from_config(GIANT)
    print(f"# device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{platform.machine()}; batch {args.batch} x {config.all_frames} frames {args.frame_size}px, "
          f"dtype {args.dtype}, params {args.param_dtype}")
    rows = [measure(config, args.batch, args.frame_size, jnp.dtype(args.dtype), jnp.dtype(args.param_dtype), remat)
            for remat in (False, True)]
    for row in rows:
        print(json.dumps(row))
    print("| remat | residuals (all / minus weights) | XLA arguments | XLA temp | XLA peak estimate | compile |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {'on' if row['remat'] else 'off'} | {row['residual_bytes'] / GIB:.2f} / "
              f"{row['residual_activation_bytes'] / GIB:.2f} GiB | {row['argument_size_in_bytes'] / GIB:.2f} GiB "
              f"| {row['temp_size_in_bytes'] / GIB:.2f} GiB | {row['peak_estimate_bytes'] / GIB:.2f} GiB "
              f"| {row['compile_s']} s |")
    for label, key in (("saved activations", "residual_activation_bytes"), ("XLA temporaries", "temp_size_in_bytes")):
        saved = rows[0][key] - rows[1][key]
        print(f"remat saves {saved / GIB:.2f} GiB of {label} ({saved / max(rows[0][key], 1):.0%})")


if __name__ == "__main__":
    main()
