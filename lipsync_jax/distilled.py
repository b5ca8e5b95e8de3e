"""Consistency-distilled (student) UNet checkpoints: what their metadata says, and how the edges
(infer.py, the app, batch, live mode) sample with them.

A student is a converted-weights folder (``lipsync_jax.checkpoints``) whose ``metadata.json``
has a ``"student"`` block, written by ``python -m lipsync_jax.train.export`` for a run of
configs/unet/distill.py: what it was distilled from and how. Its parameter tree and
``config.json`` are the teacher's, so it loads wherever the teacher does.

    info = student_info("checkpoints/jax/unet_student")     # dict, or None for any other checkpoint
    choice = student_sampling(info, solver=None, num_steps=None, guidance_scale=None)
    # -> SamplingChoice(solver="lcm", num_steps=4, guidance_scale=1.0, note="...")
    scheduler = student_scheduler(models.scheduler, info)    # the LCMScheduler to pass as scheduler=
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from lipsync_jax import checkpoints
from lipsync_jax.diffusion.lcm import LCMConfig, LCMScheduler
from lipsync_jax.diffusion.sampler import SamplerOptionError

STUDENT_KEY = "student"
KIND = "consistency"  # latent consistency distillation (LCM)


class StudentOptionError(SamplerOptionError):
    """A sampler option that a student (or a non-student) checkpoint cannot run with."""


def student_metadata(distill: Mapping[str, Any], training_step: int | None = None) -> dict[str, Any]:
    """The ``"student"`` block for a run's ``distill`` config section (export writes it)."""
    from lipsync_jax.config_utils import resolve_path

    teacher = str(distill["teacher_ckpt_path"])
    teacher_abs = resolve_path(teacher) if teacher else ""
    block: dict[str, Any] = {
        "kind": KIND,
        "teacher": teacher_abs or "random weights (test run)",
        "student_steps": int(distill["student_steps"]),
        "solver": "lcm",
        "guidance": {"mode": str(distill["guidance"]), "scale": float(distill["guidance_scale"])},
        "lcm": dataclasses.asdict(LCMConfig(origin_steps=int(distill["origin_steps"]),
                                            sigma_data=float(distill["sigma_data"]),
                                            timestep_scaling=float(distill["timestep_scaling"]))),
        "teacher_solver": str(distill["teacher_solver"]),
        "ema_decay": float(distill["ema_decay"]),
    }
    if training_step is not None:
        block["distill_step"] = int(training_step)
    if teacher_abs and checkpoints.is_converted(teacher_abs):
        meta = checkpoints.read_metadata(teacher_abs)
        block["teacher_metadata"] = {k: meta[k] for k in ("source", "training_step", "lipsync_jax_version")
                                     if k in meta}
    return block


def student_info(checkpoint: str | os.PathLike | None) -> dict[str, Any] | None:
    """The ``"student"`` block of a converted checkpoint folder; None for a teacher, an original
    ``.pt`` file, a missing path or None. A malformed block raises ``StudentOptionError`` (one
    line naming the file)."""
    if checkpoint is None or not checkpoints.is_converted(checkpoint):
        return None
    block = checkpoints.read_metadata(checkpoint).get(STUDENT_KEY)
    if block is None:
        return None
    where = os.path.join(os.path.abspath(os.fspath(checkpoint)), "metadata.json")
    try:
        if block["kind"] != KIND:
            raise ValueError(f"kind {block['kind']!r} (expected {KIND!r})")
        steps, guidance = int(block["student_steps"]), block["guidance"]
        lcm = LCMConfig.from_dict(block["lcm"])
        if steps < 1 or steps > lcm.origin_steps or guidance["mode"] != "fixed" or float(guidance["scale"]) <= 0:
            raise ValueError("student_steps / guidance out of range")
    except (KeyError, TypeError, ValueError) as error:
        raise StudentOptionError(f"{where}: malformed 'student' metadata ({error})") from None
    return dict(block)


@dataclasses.dataclass(frozen=True)
class SamplingChoice:
    solver: str | None          # None: the caller's default (config.run.scheduler)
    num_steps: int | None       # None: the caller's default (config.run.inference_steps)
    guidance_scale: float | None  # None: the caller's default (config.run.guidance_scale)
    note: str | None = None     # one line to print (what was decided for a student, or a warning), or None


def student_sampling(info: Mapping[str, Any] | None, *, solver: str | None = None, num_steps: int | None = None,
                     guidance_scale: float | None = None, checkpoint: str | None = None) -> SamplingChoice:
    """The sampler settings for a checkpoint, from what the user gave (None = not given).

    A student (``info`` from ``student_info``) samples with "lcm" (another solver is refused),
    ``num_steps`` defaults to its ``student_steps`` (at most its origin steps), and guidance is
    off: its scale is distilled in, so an explicit ``guidance_scale`` > 1 is refused (one
    line) and a missing one becomes 1.0 (one UNet call per step). Any other checkpoint passes
    through unchanged; with "lcm" (it is no consistency model) the note is a warning line naming
    ``checkpoint`` (None: random weights). Raises ``StudentOptionError``."""
    if info is None:
        warning = None
        if solver == "lcm":
            what = f"the UNet {checkpoint}" if checkpoint else "this UNet (random weights)"
            warning = (f"WARNING: scheduler lcm samples a consistency-distilled student; {what} has no 'student' "
                       "metadata (written by python -m lipsync_jax.train.export for a configs/unet/distill.py run), "
                       "so a few lcm steps give no usable output")
        return SamplingChoice(solver, num_steps, guidance_scale, warning)
    teacher = info.get("teacher", "?")
    if solver is not None and solver != "lcm":
        raise StudentOptionError(f"this UNet is a consistency-distilled student (of {teacher}): it samples with "
                                 f"scheduler lcm, not {solver}")
    origin = int(info["lcm"]["origin_steps"])
    steps = int(info["student_steps"]) if num_steps is None else num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= origin:
        raise StudentOptionError(f"a consistency student samples with 1 to {origin} steps (it was distilled for "
                                 f"{info['student_steps']}), got {num_steps!r}")
    scale = float(info["guidance"]["scale"])
    if guidance_scale is not None and guidance_scale > 1.0:
        raise StudentOptionError(f"guidance {guidance_scale:g} is refused: this student has guidance {scale:g} "
                                 "distilled in and runs without classifier-free guidance (leave --guidance out)")
    note = (f"consistency student of {teacher}: scheduler lcm, {steps} steps, guidance {scale:g} distilled in "
            "(one UNet call per step)")
    return SamplingChoice("lcm", steps, 1.0, note)


def student_scheduler(ddim_scheduler: Any, info: Mapping[str, Any] | None) -> Any:
    """The scheduler to pass as ``scheduler=`` with solver "lcm": the student's ``LCMScheduler``
    (its origin steps and boundary condition) over the DDIM noise schedule; ``ddim_scheduler``
    itself for any other checkpoint."""
    if info is None:
        return ddim_scheduler
    return LCMScheduler.from_ddim_config(ddim_scheduler.config, info["lcm"])
