"""What the engine's fsdp axis buys per device: XLA's compiled memory analysis, FLOPs and collectives
of the chunk program on a ``(data, fsdp)`` mesh (lipsync_jax/pipeline/placement.py), per fsdp size.

    python bench/bench_fsdp.py --fake_devices 4 --one_level_width 512        # the RESULTS.md rows
    python bench/bench_fsdp.py --config configs/unet/stage2.py --dtype bfloat16 --fake_devices 8

Nothing is allocated: the weights are ``ShapeDtypeStruct`` s carrying the engine's shardings
(``models.abstract_models`` + ``placement.weight_shardings``), the program is compiled for them.
``--fake_devices N`` runs on N fake CPU devices (XLA_FLAGS, set before jax starts).
``--one_level_width C`` cuts the config's UNet to one level of C channels (cross-attention and
motion modules kept; the weights dominate, compiles in seconds). Per fsdp: the chunks per call (one
per data shard), per-device argument (weights + inputs) and temporary bytes, per-device GFLOP of
one call (XLA cost analysis) and the count of each collective in the compiled program.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "unet", "tiny.py"))
    parser.add_argument("--fake_devices", type=int, default=None, help="N fake CPU devices (default: the real ones)")
    parser.add_argument("--fsdp", default=None, help="comma-separated fsdp sizes (default: every divisor)")
    parser.add_argument("--one_level_width", type=int, default=None, help="cut the UNet to one level of C channels")
    parser.add_argument("--frames", type=int, default=None, help="frames per chunk (default: the config's)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.fake_devices:  # before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.fake_devices}").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp

    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline.memory import tree_bytes
    from lipsync_jax.pipeline.models import abstract_models
    from lipsync_jax.pipeline.placement import engine_mesh, fsdp_choices, weight_shardings
    from lipsync_jax.pipeline.program import ChunkProgram

    config = load_config(args.config)
    if args.one_level_width:
        config.model.update(dict(block_out_channels=(args.one_level_width,),
                                 down_block_types=("CrossAttnDownBlock3D",), up_block_types=("CrossAttnUpBlock3D",),
                                 layers_per_block=1, motion_module_resolutions=(1,)))
    if args.frames:
        config.data.num_frames = args.frames
    models = abstract_models(config, jnp.dtype(args.dtype))
    n = jax.local_device_count()
    sizes = [int(s) for s in args.fsdp.split(",")] if args.fsdp else fsdp_choices(n)
    mib = 2 ** 20
    print(f"{n} x {jax.devices()[0].device_kind}; UNet {tree_bytes(models.unet_params) / mib:.1f} MiB, "
          f"VAE {tree_bytes(models.vae_params) / mib:.1f} MiB ({args.dtype}); {models.num_frames} frames, "
          f"{models.resolution} px, {args.steps} steps, CFG", flush=True)
    rows = []
    for fsdp in sizes:
        mesh = engine_mesh(fsdp=fsdp)
        unet_sh, vae_sh = weight_shardings(models, mesh)
        place = lambda tree, sh: jax.tree.map(  # noqa: E731
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
        program = ChunkProgram(models, mesh, num_steps=args.steps, guidance_scale=1.5)
        compiled = program.lower(place(models.unet_params, unet_sh), place(models.vae_params, vae_sh)).compile()
        memory = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
        hlo = compiled.as_text()
        row = dict(fsdp=fsdp, chunks_per_call=program.batch, argument_mib=memory.argument_size_in_bytes / mib,
                   temp_mib=memory.temp_size_in_bytes / mib, gflop_per_device=float(cost.get("flops", 0.0)) / 1e9,
                   **{op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(")
                      for op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all")})
        row["gflop_per_chunk"] = row["gflop_per_device"] * n / program.batch
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| fsdp | chunks/call | argument MiB/device | temp MiB/device | GFLOP/device | GFLOP/chunk (all devices) "
          "| all-gather | all-reduce | all-to-all |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fsdp']} | {r['chunks_per_call']} | {r['argument_mib']:.1f} | {r['temp_mib']:.1f} | "
              f"{r['gflop_per_device']:.1f} | {r['gflop_per_chunk']:.1f} | {r['all-gather']} | {r['all-reduce']} | "
              f"{r['all-to-all']} |")


if __name__ == "__main__":
    main()
