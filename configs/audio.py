"""SyncNet mel-spectrogram settings: LatentSync's configs/audio.yaml (the Wav2Lip hparams),
grouped under ``audio`` as there. 16 kHz audio, pre-emphasis 0.97, 800-sample FFT and window,
hop 200 (80 mel frames per second), 80 mel bands 55-7600 Hz, levels normalised symmetrically
to [-4, 4]."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.audio = ml_collections.ConfigDict(dict(
        num_mels=80,
        rescale=True,
        rescaling_max=0.9,
        use_lws=False,
        n_fft=800,
        hop_size=200,
        win_size=800,
        sample_rate=16000,
        frame_shift_ms=config_dict.placeholder(float),  # None: hop_size is used
        signal_normalization=True,
        allow_clipping_in_normalization=True,
        symmetric_mels=True,
        max_abs_value=4.0,
        preemphasize=True,
        preemphasis=0.97,
        min_level_db=-100,
        ref_level_db=20,
        fmin=55,
        fmax=7600,
    ))
    return config
