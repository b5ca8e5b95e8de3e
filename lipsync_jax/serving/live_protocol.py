"""The live WebSocket protocol's messages, parsed: every bad one becomes one line naming the problem.

Client -> server (``/ws``):
- optionally first a text message ``{"type": "start", "format": "int16" | "float32",
  "sample_rate": 16000, "seed": N, "pace": true, "stride": S | "max_latency": SECONDS}``
  (every field optional; values parsed by pipeline/job.py's parsers, so a bad value gets the same
  message as at the other doors: ``seed 'x': must be a whole number in 0..4294967295``);
- binary messages of 16 kHz mono little-endian audio of that format (any length: whole samples,
  finite values);
- ``{"type": "end"}`` when the audio is over.

Anything else (text that is not JSON, JSON that is not an object, an unknown ``type`` or field,
a second ``start``, audio or ``end`` after ``end``) raises ``ProtocolError`` with a one-line
message; the server sends it as ``{"type": "error", "message": ...}``, logs it and closes the
socket normally (code 1000).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from lipsync_jax.live.audio_online import to_float_audio
from lipsync_jax.pipeline.job import NUM_FRAMES, OptionError, parse_choice, parse_float, parse_int, parse_seed

AUDIO_FORMATS = ("int16", "float32")
SAMPLE_RATE = 16000
FIELDS = {"start": ("type", "format", "sample_rate", "seed", "pace", "stride", "max_latency"), "end": ("type",)}


class ProtocolError(ValueError):
    """A client message the protocol does not accept; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Start:
    """A session's settings from its start message (None: the server's default)."""

    format: str = "int16"
    seed: int | None = None
    pace: bool | None = None
    stride: int | None = None
    max_latency: float | None = None


def _preview(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_text(text: str) -> dict[str, Any]:
    """A text message -> its JSON object, with a known ``type`` and only that type's fields."""
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError(f"message {_preview(text)}: not JSON (text messages are JSON objects such as "
                            f'{{"type": "end"}})') from None
    if not isinstance(message, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(message), "number")
        raise ProtocolError(f"message {_preview(text)}: a JSON {kind}, not an object with a \"type\"")
    kind = message.get("type")
    if kind not in FIELDS:
        raise ProtocolError(f"message type {kind!r}: use start (first, optional) or end")
    unknown = sorted(set(message) - set(FIELDS[kind]))
    if unknown:
        raise ProtocolError(f"{kind} message: unknown field{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))} (known: {', '.join(FIELDS[kind][1:]) or 'none'})")
    return message


def parse_start(message: dict[str, Any]) -> Start:
    """The settings of a ``start`` message (``OptionError`` / ``ProtocolError`` on a bad value)."""
    fmt = parse_choice("format", message.get("format", "int16"), AUDIO_FORMATS)
    if "sample_rate" in message:
        rate = parse_int("sample_rate", message["sample_rate"], low=1)
        if rate != SAMPLE_RATE:
            raise OptionError(f"sample_rate {rate}: must be {SAMPLE_RATE} (send 16 kHz mono audio)")
    pace = message.get("pace")
    if pace is not None and not isinstance(pace, bool):
        raise OptionError(f"pace {pace!r}: must be true or false")
    stride = message.get("stride")
    stride = None if stride is None else parse_int("stride", stride, low=1, high=NUM_FRAMES)
    latency = message.get("max_latency")
    latency = None if latency is None else parse_float("max_latency", latency, low=0.0)
    if stride is not None and latency is not None:
        raise OptionError("use stride or max_latency, not both")
    seed = message.get("seed")
    return Start(format=fmt, seed=None if seed is None else parse_seed(seed), pace=pace, stride=stride,
                 max_latency=latency)


def audio_samples(data: bytes, fmt: str) -> np.ndarray:
    """A binary message -> float32 samples (whole samples of ``fmt``, all finite)."""
    try:
        return to_float_audio(data, fmt)
    except ValueError as error:
        raise ProtocolError(str(error)) from None
