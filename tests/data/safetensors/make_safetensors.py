"""Regenerates official.safetensors with the reference `safetensors` package (needs torch and
safetensors; our tests do not) plus official_expected.npz (bfloat16 stored as float32).

    python tests/data/safetensors/make_safetensors.py
"""

import os

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    torch.manual_seed(0)
    tensors = {
        "conv_in.weight": torch.randn(4, 3, 3, 3),
        "conv_in.bias": torch.randn(4).half(),
        "norm.weight": torch.randn(5).bfloat16(),
        "double": torch.randn(2, 2, dtype=torch.float64),
        "steps": torch.arange(3),
        "index": torch.arange(4, dtype=torch.int32),
        "mask": torch.tensor([True, False]),
        "bytes": torch.arange(6, dtype=torch.uint8),
        "scalar": torch.tensor(1.25),
    }
    save_file(tensors, os.path.join(HERE, "official.safetensors"), metadata={"format": "pt", "note": "tiny"})
    np.savez(os.path.join(HERE, "official_expected.npz"),
             **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()})


if __name__ == "__main__":
    main()
