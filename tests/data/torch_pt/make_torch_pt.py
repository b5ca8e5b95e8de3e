"""Regenerates the genuine torch.save files in this folder (needs torch; our tests do not).

    python tests/data/torch_pt/make_torch_pt.py

Each ``<name>.pt`` has a ``<name>_expected.npz`` with the same tensors as plain numpy arrays
(keys are "/"-joined paths; bfloat16 tensors are stored as float32), written by torch itself.
"""

import argparse
import collections
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 5))


def views_checkpoint() -> dict:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) / 7
    state = collections.OrderedDict()
    state["base"] = base
    state["transposed"] = base.t()  # shares base's storage, non-contiguous
    state["offset_slice"] = base[2:, 3:]  # storage offset 19, row stride 8
    state["strided"] = base[::2, ::3]
    state["expanded"] = torch.arange(3, dtype=torch.float32).reshape(3, 1).expand(3, 4)  # stride 0
    state["half"] = (torch.arange(10, dtype=torch.float32) / 3).half()
    state["bfloat16"] = (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 5).bfloat16()
    state["bfloat16_t"] = state["bfloat16"].t()
    state["float64"] = torch.linspace(-1, 1, 5, dtype=torch.float64)
    state["int64"] = torch.arange(-3, 4)
    state["int32"] = torch.arange(4, dtype=torch.int32)
    state["uint8"] = torch.arange(250, 256, dtype=torch.uint8)
    state["bool"] = torch.tensor([True, False, True])
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 3)
    state["parameter"] = torch.nn.Parameter(torch.ones(2, 2) * 0.5)
    return {"global_step": 1234, "state_dict": state}


def module_checkpoint() -> collections.OrderedDict:
    return tiny_module().state_dict()


def extras_checkpoint() -> dict:
    return {
        "state_dict": {"w": torch.ones(2)},
        "args": argparse.Namespace(lr=1e-4, name="stage2"),
        "best_loss": np.float64(0.25),
        "epoch": np.int64(3),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "raw": b"abc",
        "tags": {"a", "b"},
    }


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}/"))
        return out
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        return {prefix[:-1]: (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()}
    return {}


def main() -> None:
    for name, obj in (("views", views_checkpoint()), ("module", module_checkpoint()), ("extras", extras_checkpoint())):
        torch.save(obj, os.path.join(HERE, f"{name}.pt"))
        np.savez(os.path.join(HERE, f"{name}_expected.npz"), **flatten(obj))
    torch.save({"w": torch.ones(2)}, os.path.join(HERE, "legacy.pt"), _use_new_zipfile_serialization=False)
    print(f"torch {torch.__version__}: wrote views, module, extras, legacy to {HERE}")


if __name__ == "__main__":
    main()
