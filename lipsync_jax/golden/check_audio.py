"""Golden checks for the audio front end: ``whisper_audio`` and ``syncnet_mel`` fixtures and the
``whisper_tiny`` manifest."""

from __future__ import annotations

import math
from typing import Any

from lipsync_jax.audio.features import AudioFeatureExtractor, frame_chunk_indices, gather_frame_windows
from lipsync_jax.audio.syncnet_mel import syncnet_mel, syncnet_mel_crop
from lipsync_jax.audio.whisper_encoder import WhisperEncoderConfig, abstract_params
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram, mel_windows
from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.convert.whisper import buffer_param_count, convert_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_exact, compare_param_tree, compare_rel
from lipsync_jax.tree_utils import count_params

MEL_TOL = 1e-4
EMBEDDING_TOL = 1e-4


def _check_whisper(fixture: Fixture) -> list[Comparison]:
    kind, out, cfg = fixture.kind, fixture.outputs, fixture.config
    params, report = convert_state_dict(fixture.weights_f32(), cfg)
    report.raise_if_problems(f"{fixture.path} weights")
    extractor = AudioFeatureExtractor(params, cfg)
    audio = fixture.inputs["audio_16k"]
    log_mel = log_mel_spectrogram(audio, extractor.config.n_mels)
    windows, _ = mel_windows(log_mel, extractor.config.n_frames)
    embeddings = extractor.clip_embeddings(audio)
    indices = frame_chunk_indices(len(embeddings), cfg.get("fps", 25), cfg.get("audio_feat_length", (2, 2)))
    chunks = gather_frame_windows(embeddings, indices)
    first = out["whisper_chunks_first40"].shape[0]
    return [compare_rel(kind, "log_mel", log_mel, out["log_mel"], MEL_TOL),
            compare_rel(kind, "log_mel_first_window", windows[0].T, out["log_mel_first_window"], MEL_TOL),
            compare_rel(kind, "layer_embeddings", embeddings, out["layer_embeddings"], EMBEDDING_TOL),
            compare_exact(kind, "chunk_indices", indices, out["chunk_indices"]),
            compare_rel(kind, "whisper_chunks_first40", chunks[:first], out["whisper_chunks_first40"], EMBEDDING_TOL)]


def _check_syncnet_mel(fixture: Fixture) -> list[Comparison]:
    kind, out = fixture.kind, fixture.outputs
    mel = syncnet_mel(fixture.inputs["wav"], fixture.config)
    crop = syncnet_mel_crop(mel, int(fixture.inputs["start_frame"]), int(fixture.inputs["num_frames"]))
    return [compare_rel(kind, "mel", mel, out["mel"], MEL_TOL),
            compare_rel(kind, "crop", crop, out["crop"], MEL_TOL)]


def check_fixture(fixture: Fixture) -> list[Comparison]:
    if fixture.kind == "whisper_audio":
        return _check_whisper(fixture)
    if fixture.kind == "syncnet_mel":
        return _check_syncnet_mel(fixture)
    raise ValueError(f"{fixture.path}: check_audio handles whisper_audio/syncnet_mel fixtures, not {fixture.kind!r}")


def check_manifest(manifest: dict[str, Any]) -> list[Comparison]:
    """The encoder converts completely; parameter count = the encoder parameters we hold (without
    the sinusoid table, a torch buffer) + the decoder parameters we skip on purpose."""
    name, shapes = manifest["name"], manifest["state_dict"]
    config = WhisperEncoderConfig.from_config(manifest)
    _, report = convert_state_dict(manifest_state_dict(manifest), config)
    encoder = count_params(abstract_params(config)) - buffer_param_count(config)
    skipped = sum(math.prod(shapes[k]) for k in report.skipped)
    expected = int(manifest["total_params"])
    buffers = sum(math.prod(v) for k, v in shapes.items() if k.endswith(("encoder.positional_embedding",
                                                                         "encoder.embed_positions.weight")))
    listed = sum(math.prod(v) for v in shapes.values()) - buffers
    comparisons = compare_param_tree("whisper_audio", name, report, expected, encoder + skipped)
    comparisons[1].detail += (f" (encoder {encoder:,} + skipped decoder {skipped:,};"
                              f" {len(report.skipped)} decoder keys skipped)")
    comparisons.append(Comparison("whisper_audio", f"{name}/manifest_total", float(abs(listed - expected)), 0.0,
                                  listed == expected, detail=f"sum of listed shapes without the position buffer "
                                  f"{listed:,} vs total_params {expected:,}"))
    return comparisons
