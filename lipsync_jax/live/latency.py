"""Latency accounting of a live session: what a frame waited for, and the session's figures.

For frame i of a window that writes frames start..stop (times are ``perf_counter`` seconds):

    audio_arrived_at   the audio sample at i's timestamp (i / fps) arrived (push time)
    audio_end_at       the last sample of the window's last new frame arrived
    final_at           the look-ahead past it arrived too: the window's audio windows are final
    ready_at           the frame was restored and queued (window launched, device program,
                       paste-back; also any wait behind the previous window)
    emitted_at         ``next_frame`` handed it out (pacing at the video rate)

so latency = emitted_at - audio_arrived_at splits into four parts that add up to it:
``look_ahead`` = final_at - audio_end_at (82.5 ms of audio past the window's new frames at 25 fps,
for Whisper's right context, + how the audio was cut into messages), ``compute`` = ready_at -
final_at (device and host work), ``pacing`` = emitted_at - ready_at - k / fps for the window's k-th
new frame (waiting beyond its turn: the k / fps are the video rate spreading the window's frames),
and ``audio``: the rest, audio_end_at - audio_arrived_at + k / fps, i.e. for audio that arrives in
real time the wait for the window's new frames' audio (about stride / fps). All measured per frame.
"""

from __future__ import annotations

import numpy as np

SPLIT = ("audio", "look_ahead", "compute", "pacing")


def frame_split(frame, fps: float) -> dict[str, float]:
    """The four parts of one frame's latency (seconds; see the module docstring)."""
    turn = (frame.index - frame.window_start) / fps
    return dict(audio=frame.audio_end_at - frame.audio_arrived_at + turn,
                look_ahead=frame.final_at - frame.audio_end_at, compute=frame.ready_at - frame.final_at,
                pacing=frame.emitted_at - frame.ready_at - turn)


def latency_metrics(frames: list, fps: float, skip: int = 16) -> dict:
    """Figures over handed-out frames (``LiveFrame`` metadata, in order; frames may be missing in
    the middle of a long stream, never reordered): first-frame latency, steady latency (after the
    first ``skip`` frames, i.e. the first window) median / p95 / max, jitter (std of the intervals
    between consecutive frames minus 1 / fps), achieved fps (frames per second of hand-out time)
    and the median of each part of the steady latency (``SPLIT``)."""
    if not frames:
        return dict(frames=0)
    latency = np.array([f.latency for f in frames])
    emitted = np.array([f.emitted_at for f in frames])
    index = np.array([f.index for f in frames])
    steady = slice(skip, None) if len(frames) > skip else slice(None)
    consecutive = np.diff(index) == 1  # intervals between frames both kept
    intervals = np.diff(emitted)[consecutive]
    span = emitted[-1] - emitted[0]
    parts = [frame_split(f, fps) for f in frames[steady]]
    return dict(frames=int(index[-1] - index[0] + 1), first_frame_latency=float(latency[0]),
                steady_latency_median=float(np.median(latency[steady])),
                steady_latency_p95=float(np.percentile(latency[steady], 95)), latency_max=float(latency.max()),
                jitter=float(np.std(intervals - 1.0 / fps)) if len(intervals) else 0.0,
                achieved_fps=float((index[-1] - index[0]) / span) if span > 0 else None,
                split={name: float(np.median([p[name] for p in parts])) for name in SPLIT})
