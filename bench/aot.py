"""Every device program compiled for accelerators this host does not have: one table (docs/aot.md).

    pip install -r requirements-aot.txt        # JAX's CUDA plugin + libtpu (~5.5 GB), not a project dependency
    python bench/aot.py --targets h100,l4,tpu:v5e-1 --configs configs/unet/stage2.py,configs/unet/stage2_512.py
    python bench/aot.py --targets rtx4060-8g --configs configs/unet/stage2_512.py --programs chunk --chunk_batch 1 \
        --vae_frames 4 --attention chunked:256 --fit

XLA:GPU (the CUDA plugin describing the target from lipsync_jax/accelerators/gpu_specs/) and XLA:TPU
(libtpu) compile each program from abstract shapes (no weights, nothing allocated, nothing run).
Per row: the compiled memory analysis of one chip (arguments = weights + one call's inputs,
outputs, temporaries; total = their sum - aliased), the compile time, FLOPs and modelled memory
traffic per call (lipsync_jax/aot/cost.py), and the roofline rate (frames/s) from the target's
public peak bf16 FLOP/s and bandwidth. These are COMPILER ESTIMATES, not measurements.
Programs (``--programs``):
  chunk      the inference chunk program (bf16, ``--steps`` DDIM steps, CFG), per ``--chunk_batch``
  dpmsolver  the same with DPM-Solver++ and ``--dpm_steps`` steps (first chunk_batch)
  deepcache  the same with DeepCache interval ``--deepcache`` (first chunk_batch)
  live       the live mode's program: the chunk program at chunk_batch 1 + Whisper on one window
  whisper    the offline Whisper encoder over 8 windows per call (AudioFeatureExtractor's batch)
  train      the stage-1 and stage-2 train steps (stage1*.py next to the stage-2 config;
             ``--train_stages``), one clip per chip, every chip of the target data-parallel
             (docs/scaling.md)
``--fit``: the whole inference job per (target, config) at each chunk_batch: chunk program +
Whisper (weights and its batch-8 working set) + the queued batches (pipeline/memory.py's
``queued_bytes``, 2 batches), against ``--budgets`` (default v1.5 6 GiB, v1.6 8 GiB on consumer
cards, 16 GiB on TPU v5e). Results are cached in ``--cache`` (JSON): a row compiles once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's own backend; targets come from the plugins

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from lipsync_jax.accelerators import GIB, UnknownTargetError  # noqa: E402
from lipsync_jax.aot import AOTUnavailableError, ResultCache, parse_targets  # noqa: E402
from lipsync_jax.aot.compile import CompileStats  # noqa: E402
from lipsync_jax.aot.cost import Cost, interpolate_branches, roofline  # noqa: E402
from lipsync_jax.aot.footprint import cached_compile, chunk_program_key, result_key, target_identity  # noqa: E402

DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aot_results.json")
PROGRAMS = ("chunk", "dpmsolver", "deepcache", "live", "whisper", "train")
WHISPER_OFFLINE_BATCH = 8  # AudioFeatureExtractor.max_batch


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def attention_label(target, backend: str) -> str:
    if backend != "auto":
        return backend
    return "auto=cudnn+xla" if target.platform == "gpu" else "auto=pallas+xla"


def stage1_config(path: str) -> str | None:
    candidate = os.path.join(os.path.dirname(path), os.path.basename(path).replace("stage2", "stage1"))
    return candidate if candidate != path and os.path.exists(candidate) else None


def config_identity(path: str) -> str:
    from lipsync_jax.config_utils import config_to_dict, load_config, resolve_path

    return result_key(config=config_to_dict(load_config(resolve_path(path))))


class Bench:
    def __init__(self, args):
        self.args = args
        self.cache = ResultCache(args.cache)
        self.rows: list[dict] = []
        self.models: dict = {}

    def abstract(self, path: str):
        if path not in self.models:
            from lipsync_jax.config_utils import load_config, resolve_path
            from lipsync_jax.pipeline.models import abstract_models

            self.models[path] = abstract_models(load_config(resolve_path(path)))
        return self.models[path]

    def add(self, target, program: str, config: str, batch: str, attention: str, compute,
            key: str | None = None) -> CompileStats | None:
        """One row: ``compute()`` -> CompileStats (cached by the caller), or the error it raised
        (``--cached_only``: rows whose ``key`` is not in the cache are listed, not compiled)."""
        row = dict(target=target.name, program=program, config=config, batch=batch, attention=attention)
        if self.args.cached_only and key is not None and not self.cache.get(key):
            row["error"] = "not in the cache"
            self.rows.append(row)
            return None
        try:
            row["stats"] = compute()
        except AOTUnavailableError as error:
            raise SystemExit(str(error)) from None
        except Exception as error:  # noqa: BLE001 - a compile the target refuses is a row, not the end
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            log(f"{target.name} {program} {config} {batch}: {row['error']}")
        self.rows.append(row)
        return row.get("stats")

    def chunk(self, target, path: str, program: str, chunk_batch: int, *, num_steps: int, sampler_options=None):
        args = self.args
        models = self.abstract(path)
        settings = dict(chunk_batch=chunk_batch, vae_frames=int(args.vae_frames or models.num_frames),
                        attention=args.attention, num_steps=num_steps, cfg=args.guidance > 1.0,
                        sampler=dict(sampler_options or {}))
        key = chunk_program_key(target, models, **settings)
        label = f"{os.path.basename(path)} {models.resolution}px"

        def compute():
            from lipsync_jax.aot.programs import trace_chunk_program

            if not self.cache.get(key):
                log(f"compiling {target.name} {program} {label} chunk_batch {chunk_batch} ...")
            trace = lambda: trace_chunk_program(  # noqa: E731
                target, models, chunk_batch=chunk_batch, vae_frames=args.vae_frames or None,
                attention_backend=args.attention, num_steps=num_steps, guidance_scale=args.guidance,
                sampler_options=sampler_options)
            stats = cached_compile(self.cache, key, trace, target, log=log)
            interval = int((sampler_options or {}).get("deepcache_interval", 0))
            return deepcache_weighted(stats, target, num_steps, interval) if interval > 1 else stats
        name = program if program != "chunk" else f"chunk ({num_steps} DDIM)"
        if program == "dpmsolver":
            name = f"chunk DPM-Solver++ {num_steps}"
        if program == "deepcache":
            name = f"chunk DeepCache {sampler_options['deepcache_interval']}"
        batch = f"chunk_batch {chunk_batch}" + (f", VAE {settings['vae_frames']} frames" if args.vae_frames else "")
        stats = self.add(target, name, label, batch, attention_label(target, args.attention), compute, key)
        self.rows[-1].update(chunk_batch=chunk_batch, path=path, vae_frames=settings["vae_frames"])
        return stats

    def whisper(self, target, path: str, batch: int, program: str):
        models = self.abstract(path)
        key = result_key(kind="whisper", audio=repr(models.audio.config), batch=batch, **target_identity(target))

        def compute():
            from lipsync_jax.aot.programs import trace_whisper

            return cached_compile(self.cache, key, lambda: trace_whisper(target, models, batch), target, log=log)
        return self.add(target, program, "whisper-tiny f32", f"{batch} windows", attention_label(target, "auto"),
                        compute, key)

    def train(self, target, path: str, program: str):
        key = result_key(kind="train_step", config=config_identity(path), per_chip_batch=1, chips=target.chips,
                         attention=self.args.attention, **target_identity(target))

        def compute():
            from lipsync_jax.aot.programs import trace_train_step

            if not self.cache.get(key):
                log(f"compiling {target.name} train step {path} on {target.chips} chip(s) ...")
            backend = None if self.args.attention == "auto" else self.args.attention
            trace = lambda: trace_train_step(target, path, per_chip_batch=1, attention_backend=backend)  # noqa: E731
            return cached_compile(self.cache, key, trace, target, log=log)
        from lipsync_jax.config_utils import load_config, resolve_path

        resolution = int(load_config(resolve_path(path)).data.resolution)
        return self.add(target, program, f"{os.path.basename(path)} {resolution}px",
                        f"1 clip/chip x {target.chips}", attention_label(target, self.args.attention), compute, key)


def deepcache_weighted(stats: CompileStats, target, num_steps: int, interval: int) -> CompileStats:
    """The row's FLOPs/traffic with DeepCache's shallow steps counted as shallow: the jaxpr cost
    counts each step's ``lax.cond`` at its expensive branch; re-weighted by the full-step share."""
    from lipsync_jax.diffusion.sampler import deepcache_full_steps

    full = float(sum(deepcache_full_steps(num_steps, interval))) / num_steps
    if stats.flops_low is None:
        return stats
    cost = interpolate_branches(Cost(stats.flops, stats.bytes_accessed, stats.unknown_loops, stats.flops_low,
                                     stats.bytes_low), full)
    line = roofline(cost.flops, cost.bytes, stats.items_per_call, target.peak_bf16_flops, target.memory_bandwidth)
    values = dict(stats.as_dict(), flops=cost.flops, bytes_accessed=cost.bytes, roofline_compute_s=line.seconds_compute,
                  roofline_memory_s=line.seconds_memory)
    return CompileStats.from_dict(values)


def run(args) -> Bench:
    bench = Bench(args)
    targets = parse_targets(args.targets)
    configs = [c for c in args.configs.split(",") if c]
    programs = [p for p in args.programs.split(",") if p]
    if args.fit and "whisper" not in programs:
        programs.append("whisper")
    batches = [int(b) for b in args.chunk_batch.split(",") if b]
    for target in targets:
        for path in configs:
            for program in programs:
                if program == "chunk":
                    for cb in batches:
                        bench.chunk(target, path, "chunk", cb, num_steps=args.steps)
                elif program == "dpmsolver":
                    bench.chunk(target, path, "dpmsolver", batches[0], num_steps=args.dpm_steps,
                                sampler_options={"solver": "dpmsolver++"})
                elif program == "deepcache":
                    bench.chunk(target, path, "deepcache", batches[0], num_steps=args.steps,
                                sampler_options={"deepcache_interval": args.deepcache})
                elif program == "live":
                    bench.chunk(target, path, "live", 1, num_steps=args.steps)
                    bench.whisper(target, path, 1, "live: Whisper")
                elif program == "whisper":
                    bench.whisper(target, path, WHISPER_OFFLINE_BATCH, "Whisper encoder")
                elif program == "train":
                    stages = {"1": stage1_config(path), "2": path}
                    for train_path in (stages[s] for s in args.train_stages.split(",")):
                        if train_path:
                            stage = "stage-1" if "stage1" in os.path.basename(train_path) else "stage-2"
                            bench.train(target, train_path, f"{stage} train step")
                else:
                    raise SystemExit(f"--programs: unknown program {program!r}; choose from {', '.join(PROGRAMS)}")
    return bench


def format_rows(rows: list[dict], targets) -> str:
    peaks = {t.name: t for t in targets}
    head = ("| target | program | config | batch | attention | arguments GiB | outputs GiB | temporaries GiB | "
            "total GiB | compile s | GFLOP / call | GB traffic / call | roofline frames/s (bound) |")
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        cells = [row["target"], row["program"], row["config"], row["batch"], row["attention"]]
        stats = row.get("stats")
        if stats is None:
            lines.append("| " + " | ".join(cells + [f"not compiled: {row.get('error', '?')}"] + [""] * 7) + " |")
            continue
        lines.append("| " + " | ".join(cells + [
            f"{stats.gib('argument_bytes'):.2f}", f"{stats.gib('output_bytes'):.2f}", f"{stats.gib('temp_bytes'):.2f}",
            f"{stats.total_bytes / GIB:.2f}", f"{stats.compile_seconds:.0f}", f"{stats.flops / 1e9:,.0f}",
            f"{stats.bytes_accessed / 1e9:,.1f}", f"{stats.roofline_items_per_second:,.1f} ({stats.bound})"]) + " |")
    notes = sorted({r["target"] for r in rows})
    lines.append("")
    lines.append("Peaks used by the roofline: " + "; ".join(
        f"{n}: {peaks[n].peak_bf16_flops / 1e12:g} TFLOP/s bf16, {peaks[n].memory_bandwidth / 1e9:,.0f} GB/s "
        f"({peaks[n].source})" for n in notes if n in peaks))
    return "\n".join(lines)


def fit_table(bench: Bench, targets, budgets: dict) -> str:
    """Whole inference job per target/config/chunk_batch (module doc)."""
    from lipsync_jax.pipeline.memory import queued_bytes

    lines = ["| target | config | chunk_batch | VAE slice | attention | chunk program GiB | Whisper (weights + "
             "batch-8 working set) GiB | queued batches GiB | whole job GiB | budget GiB | fits | "
             "Whisper on the host: GiB, fits |",
             "|" + "---|" * 12]
    whisper = {r["target"]: r["stats"] for r in bench.rows if r["program"] == "Whisper encoder" and "stats" in r}
    for row in bench.rows:
        if not row["program"].startswith("chunk (") or "stats" not in row:
            continue
        target = next(t for t in targets if t.name == row["target"])
        models, cb = bench.models[row["path"]], row["chunk_batch"]
        w = whisper.get(target.name)
        if w is None:
            continue
        queued = queued_bytes(models, cb, 2)
        total = row["stats"].total_bytes + w.total_bytes + queued
        budget = budgets.get((target.name, models.resolution), target.memory_bytes / GIB)
        on_host = total - w.total_bytes
        fits = lambda n, budget=budget: "yes" if n <= budget * GIB else "NO"  # noqa: E731
        lines.append(f"| {target.name} | {row['config']} | {cb} | {row['vae_frames']} | {row['attention']} | "
                     f"{row['stats'].total_bytes / GIB:.2f} | {w.total_bytes / GIB:.2f} | {queued / GIB:.2f} | "
                     f"{total / GIB:.2f} | {budget:.1f} | {fits(total)} | {on_host / GIB:.2f}, {fits(on_host)} |")
    return "\n".join(lines)


def default_budgets(targets) -> dict:
    out = {}
    for t in targets:
        if t.consumer:
            out[(t.name, 256)], out[(t.name, 512)] = 6.0, 8.0
        elif t.name == "tpu:v5e-1":
            out[(t.name, 512)] = 16.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="h100,l4,tpu:v5e-1", help="comma-separated names, or 'all'")
    parser.add_argument("--configs", default="configs/unet/stage2.py,configs/unet/stage2_512.py")
    parser.add_argument("--programs", default="chunk,dpmsolver,deepcache,live,whisper,train",
                        help=f"comma-separated: {', '.join(PROGRAMS)}")
    parser.add_argument("--chunk_batch", default="1,2,4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dpm_steps", type=int, default=10)
    parser.add_argument("--deepcache", type=int, default=3, help="DeepCache interval of the deepcache row")
    parser.add_argument("--train_stages", default="1,2", choices=("1,2", "1", "2"),
                        help="train: stage 1 (stage1*.py beside the config), stage 2 (the config), or both")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--attention", default="auto", help="the UNet's attention backend (models/attention.py)")
    parser.add_argument("--vae_frames", type=int, default=0, help="frames per VAE step (0: the chunk's 16)")
    parser.add_argument("--fit", action="store_true", help="also print the whole-job table (module doc)")
    parser.add_argument("--cached_only", action="store_true", help="print the cached rows, compile nothing")
    parser.add_argument("--per_target", action="store_true", help="one table per target")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="JSON file of compiled rows ('' = no cache)")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)  # compile-only executables are not for the disk cache
    try:
        targets = parse_targets(args.targets)
    except UnknownTargetError as error:
        raise SystemExit(f"--targets: {error}") from None
    for path in args.configs.split(","):
        if path and not os.path.exists(path):
            raise SystemExit(f"--configs: {path} does not exist")
    args.cache = args.cache or None
    bench = run(args)
    rows = bench.rows
    missing = [r for r in rows if r.get("error") == "not in the cache"]
    if args.cached_only:  # only what was compiled; the rest in one line
        rows = [r for r in rows if r not in missing]
    if args.per_target:
        for target in targets:
            mine = [r for r in rows if r["target"] == target.name]
            if mine:
                print(f"\n### {target.name}: {target.device}, {target.memory_gib:.1f} GiB\n")
                print(format_rows(mine, [target]))
    else:
        print(format_rows(rows, targets))
    if missing:
        print(f"\nNot compiled yet (not in {os.path.relpath(args.cache)}): " + "; ".join(
            f"{r['target']} {r['program']} {r['config']} {r['batch']}" for r in missing))
    if args.fit:
        print()
        print(fit_table(bench, targets, default_budgets(targets)))


if __name__ == "__main__":
    main()
