"""The rule engine every converter uses: renames + layout transforms, with a full report.

PyTorch layouts are channels-first; ours are channels-last:
  Linear (out, in)            -> Dense kernel (in, out)                      "linear"
  Conv1d (out, in, k)         -> Conv kernel (k, in, out)                    "conv1d"
  Conv2d (out, in, kh, kw)    -> Conv kernel (kh, kw, in, out)               "conv2d"
  Conv3d (out, in, t, kh, kw) -> Conv kernel (t, kh, kw, in, out)            "conv3d"
  Conv2d 1x1 used as a Dense  -> Dense kernel (in, out)                      "conv1x1_to_linear"
Biases, norm scales/offsets and buffers keep their layout ("none").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from lipsync_jax.tree_utils import Path, param_shapes, unflatten_tree

TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "none": lambda x: x,
    "linear": lambda x: x.T,
    "conv1d": lambda x: x.transpose(2, 1, 0),
    "conv2d": lambda x: x.transpose(2, 3, 1, 0),
    "conv3d": lambda x: x.transpose(2, 3, 4, 1, 0),
    "conv1x1_to_linear": lambda x: x.reshape(x.shape[0], x.shape[1]).T,
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` is fully matched against the PyTorch key; ``target`` is the Flax path with
    ``/`` separators and regex group references (``\\1``); ``transform`` names a TRANSFORMS entry.
    A rule whose ``target`` is ``None`` deliberately drops the key (reported as skipped)."""

    pattern: str
    target: str | None
    transform: str = "none"

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r} in rule {self.pattern!r}")


class ConversionError(ValueError):
    """A checkpoint does not fit the model it is being converted for."""


@dataclasses.dataclass
class ConversionReport:
    missing: list[str] = dataclasses.field(default_factory=list)  # our params left unfilled
    unexpected: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys no rule placed
    mismatched: list[str] = dataclasses.field(default_factory=list)  # "key -> path: got X, want Y"
    skipped: list[str] = dataclasses.field(default_factory=list)  # keys dropped on purpose
    converted: int = 0

    def problem_count(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def summary(self, limit: int = 5) -> str:
        parts = [f"{self.converted} converted"]
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", self.mismatched), ("skipped", self.skipped)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")
                parts.append(f"{len(items)} {label}: {shown}")
        return "; ".join(parts)

    def raise_if_problems(self, what: str) -> None:
        if self.problem_count():
            raise ConversionError(
                f"{what} does not match the model config: {self.summary(limit=10)}. "
                "Check that the --config matches the checkpoint (e.g. stage1 vs stage2).")


def manifest_state_dict(manifest: Mapping[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random stand-ins for every manifest entry, at full shape but without the memory:
    each is a random float16 scalar broadcast to the listed shape (a zero-stride view), so a
    1.2B-parameter manifest converts in seconds and a few MB."""
    rng = np.random.default_rng(seed)
    return {key: np.broadcast_to(np.float16(rng.standard_normal()), tuple(shape))
            for key, shape in manifest["state_dict"].items()}


def _compile(rules: Iterable[Rule]) -> list[tuple[re.Pattern, Rule]]:
    return [(re.compile(rule.pattern), rule) for rule in rules]


def convert_state_dict(
    state_dict: Mapping[str, Any],
    rules: Iterable[Rule],
    template: Mapping[Any, Any] | None = None,
    dtype: Any = None,
) -> tuple[dict[str, Any], ConversionReport]:
    """Apply ``rules`` to every key of ``state_dict``; the first fully matching rule wins.

    ``template`` is what the model expects: the model module's ``abstract_params`` tree, or its
    flat ``tree_utils.param_shapes``; shapes are checked and unfilled paths reported as missing.
    ``dtype`` casts converted arrays (``None`` keeps them). Returns the nested params and the report.
    """
    if template is not None and any(isinstance(v, Mapping) or hasattr(v, "shape") for v in template.values()):
        template = param_shapes(template)
    compiled = _compile(rules)
    report = ConversionReport()
    flat: dict[Path, Any] = {}
    for key, value in state_dict.items():
        for regex, rule in compiled:
            match = regex.fullmatch(key)
            if match is None:
                continue
            if rule.target is None:
                report.skipped.append(key)
                break
            path = tuple(match.expand(rule.target).split("/"))
            array = TRANSFORMS[rule.transform](np.asarray(value) if not hasattr(value, "transpose") else value)
            if dtype is not None:
                array = np.asarray(array).astype(dtype)
            if template is not None:
                want = template.get(path)
                if want is None:
                    report.unexpected.append(f"{key} (-> {'/'.join(path)}, not a model parameter)")
                    break
                if tuple(array.shape) != tuple(want):
                    report.mismatched.append(f"{key} -> {'/'.join(path)}: got {tuple(array.shape)}, want {tuple(want)}")
                    break
            if path in flat:
                report.mismatched.append(f"{key} -> {'/'.join(path)}: filled twice")
                break
            flat[path] = array
            report.converted += 1
            break
        else:
            report.unexpected.append(key)
    if template is not None:
        report.missing = ["/".join(p) for p in template if p not in flat]
    return unflatten_tree(flat), report
