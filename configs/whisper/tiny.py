"""The audio encoder LatentSync uses for cross_attention_dim 384: OpenAI Whisper tiny
(checkpoints/whisper/tiny.pt; only the encoder is used). ``dims`` are the checkpoint's own
``dims`` (needed to build the model without a checkpoint); ``ckpt_path`` "" means random
weights. Each video frame gets 10 embedding rows x 5 layers = 50 tokens of width 384; the
window size comes from the UNet config's ``data.audio_feat_length``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        ckpt_path="checkpoints/whisper/tiny.pt",
        dims=dict(
            n_mels=80,
            n_audio_ctx=1500,
            n_audio_state=384,
            n_audio_head=6,
            n_audio_layer=4,
            n_vocab=51865,
            n_text_ctx=448,
            n_text_state=384,
            n_text_head=6,
            n_text_layer=4,
        ),
    ))
