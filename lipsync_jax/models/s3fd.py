"""The S3FD face detector (``sfd_face.pth``) that LatentSync's LSE evaluation (syncnet_python's
pipeline) uses, in Flax, plus its prior boxes, box decoding and NMS (numpy, on the host).

Network (channels-last, input (b, h, w, 3) = the image minus the channel means, see
``preprocess``): VGG16 convs (3x3 pad 1 + ReLU; widths 64, 64 | 128, 128 | 256 x3 | 512 x3 |
512 x3, a 2x2/2 max pool between stages, the one after conv3_3 in ceil mode), then fc6 (3x3,
dilation 6, pad 6, 1024) + ReLU and fc7 (1x1, 1024) + ReLU. Layers are named ``vgg_<N>`` with N
the index in the original ``vgg`` ModuleList. Six sources: L2Norm(conv3_3) (scale init 10),
L2Norm(conv4_3) (8), L2Norm(conv5_3) (5), fc7, and two extra stages (1x1 -> 256 + ReLU, 3x3
stride 2 pad 1 -> 512 + ReLU; 1x1 -> 128 + ReLU, 3x3 stride 2 -> 256 + ReLU). L2Norm is
``x / (||x||_channels + 1e-10) * scale``. Heads: one 3x3 conv per source for ``loc`` (4) and
``conf`` (2; the first source's conf has 4 channels, of which the max of the first three is the
background score: "max-out" background). Outputs are flattened per source in (y, x, channel)
order and concatenated: ``loc`` (b, P, 4), ``conf`` (b, P, 2) after a softmax.

Priors: one per feature-map cell, centre ``((x + 0.5) * step / W, (y + 0.5) * step / H)``, size
``(min_size / W, min_size / H)`` with steps 4..128 and min sizes 16..512 (normalised to the
net's input size). Decoding (variances 0.1, 0.2): centre = prior centre + loc[:2] * 0.1 * prior
size, size = prior size * exp(loc[2:] * 0.2), then corners.
``narrow_by`` divides every width >= 32 (the golden fixture uses 4).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VGG_LAYOUT = (  # (index in the ModuleList, width) for the convs; "M" / "C" = max pool (floor / ceil)
    (0, 64), (2, 64), "M", (5, 128), (7, 128), "M", (10, 256), (12, 256), (14, 256), "C",
    (17, 512), (19, 512), (21, 512), "M", (24, 512), (26, 512), (28, 512), "M")
FC6, FC7 = (31, 1024), (33, 1024)
EXTRAS = ((256, 1, 1), (512, 3, 2), (128, 1, 1), (256, 3, 2))  # (width, kernel, stride)
L2NORM_SCALES = {"L2Norm3_3": 10.0, "L2Norm4_3": 8.0, "L2Norm5_3": 5.0}
MIN_SIZES = (16, 32, 64, 128, 256, 512)
STEPS = (4, 8, 16, 32, 64, 128)
VARIANCES = (0.1, 0.2)
# BGR means subtracted by S3FD.detect_faces; it flips the channels, subtracts, and flips back,
# so in the order the image is given the means are reversed (RGB input: R-123, G-117, B-104).
MEAN_IN_INPUT_ORDER = np.array([123.0, 117.0, 104.0], np.float32)


def _narrow(width: int, narrow_by: int) -> int:
    return width // narrow_by if width >= 32 else width


@dataclasses.dataclass(frozen=True)
class S3FDConfig:
    narrow_by: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> S3FDConfig:
        return cls(int(dict(config or {}).get("narrow_by", 1)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class L2Norm(nn.Module):
    features: int
    init_scale: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.constant(self.init_scale), (self.features,), self.param_dtype)
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + 1e-10
        return x / norm * scale.astype(x.dtype)


class S3FDNet(nn.Module):
    config: S3FDConfig = S3FDConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _conv(self, x, width, kernel, name, stride=1, padding=None, dilation=1):
        pad = (kernel // 2) if padding is None else padding
        return nn.Conv(width, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                       kernel_dilation=(dilation, dilation), dtype=self.dtype, param_dtype=self.param_dtype,
                       name=name)(x)

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(b, h, w, 3) mean-subtracted -> (loc (b, P, 4), softmaxed conf (b, P, 2)); P follows
        ``feature_map_sizes(h, w)``."""
        n = self.config.narrow_by
        x = images.astype(self.dtype)
        sources = []
        for item in VGG_LAYOUT:
            if item in ("M", "C"):
                if item == "C":  # ceil mode: pad odd sizes at the end with -inf
                    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, x.shape[1] % 2), (0, x.shape[2] % 2)))
                else:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            index, width = item
            x = nn.relu(self._conv(x, _narrow(width, n), 3, f"vgg_{index}"))
            if index in (14, 21, 28):
                name = {14: "L2Norm3_3", 21: "L2Norm4_3", 28: "L2Norm5_3"}[index]
                sources.append(L2Norm(x.shape[-1], L2NORM_SCALES[name], self.param_dtype, name=name)(x))
        x = nn.relu(self._conv(x, _narrow(FC6[1], n), 3, f"vgg_{FC6[0]}", padding=6, dilation=6))
        x = nn.relu(self._conv(x, _narrow(FC7[1], n), 1, f"vgg_{FC7[0]}"))
        sources.append(x)
        for k, (width, kernel, stride) in enumerate(EXTRAS):
            x = nn.relu(self._conv(x, _narrow(width, n), kernel, f"extras_{k}", stride=stride))
            if k % 2 == 1:
                sources.append(x)
        locs, confs = [], []
        for k, source in enumerate(sources):
            loc = self._conv(source, 4, 3, f"loc_{k}")
            conf = self._conv(source, 4 if k == 0 else 2, 3, f"conf_{k}")
            if k == 0:
                conf = jnp.concatenate([jnp.max(conf[..., :3], axis=-1, keepdims=True), conf[..., 3:]], axis=-1)
            locs.append(loc.reshape(loc.shape[0], -1, 4))
            confs.append(conf.reshape(conf.shape[0], -1, 2))
        return (jnp.concatenate(locs, axis=1).astype(jnp.float32),
                jax.nn.softmax(jnp.concatenate(confs, axis=1).astype(jnp.float32), axis=-1))


def feature_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) of the six sources for an input of ``height`` x ``width`` pixels."""
    def down(size):
        s4 = size // 2 // 2
        s8 = math.ceil(s4 / 2)
        s16 = s8 // 2
        s32 = s16 // 2
        s64 = (s32 - 1) // 2 + 1
        s128 = (s64 - 1) // 2 + 1
        return [s4, s8, s16, s32, s64, s128]
    return list(zip(down(height), down(width)))


def prior_boxes(height: int, width: int) -> np.ndarray:
    """(P, 4) float32 priors ``(cx, cy, w, h)``, normalised to the input size (PriorBox)."""
    rows = []
    for (fh, fw), step, min_size in zip(feature_map_sizes(height, width), STEPS, MIN_SIZES):
        ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = (xs.reshape(-1) + 0.5) / (width / step)
        cy = (ys.reshape(-1) + 0.5) / (height / step)
        rows.append(np.stack([cx, cy, np.full_like(cx, min_size / width), np.full_like(cy, min_size / height)], 1))
    return np.concatenate(rows).astype(np.float32)


def decode_boxes(loc, priors, variances=VARIANCES):
    """(..., P, 4) offsets + (P, 4) priors -> (..., P, 4) corners ``(x1, y1, x2, y2)`` (normalised).
    Works on numpy and jax arrays (float32 as the original)."""
    xp = jnp if isinstance(loc, jax.Array) else np
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * xp.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return xp.concatenate([top_left, top_left + size], axis=-1)


def preprocess(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 net input: cv2 INTER_LINEAR resize by ``scale`` (size rounded as
    cv2 does), minus the means (``MEAN_IN_INPUT_ORDER``: LatentSync feeds RGB frames)."""
    import cv2

    resized = cv2.resize(image, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32) - MEAN_IN_INPUT_ORDER


def nms_sorted(boxes: np.ndarray, scores: np.ndarray, overlap: float, top_k: int) -> np.ndarray:
    """Greedy NMS as ssd.pytorch's ``nms``: among the ``top_k`` best scores, repeatedly keep the
    best box and drop the others whose IoU with it exceeds ``overlap`` (areas without +1).
    Returns the kept indices in keep order."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    order = np.argsort(scores, kind="stable")[-top_k:]  # ascending; the best is last
    keep = []
    while order.size:
        best = order[-1]
        keep.append(int(best))
        rest = order[:-1]
        if not rest.size:
            break
        w = np.maximum(np.minimum(x2[rest], x2[best]) - np.maximum(x1[rest], x1[best]), 0.0)
        h = np.maximum(np.minimum(y2[rest], y2[best]) - np.maximum(y1[rest], y1[best]), 0.0)
        inter = w * h
        iou = inter / (area[rest] - inter + area[best])
        order = rest[iou <= overlap]
    return np.asarray(keep, np.int64)


def nms_boxes(dets: np.ndarray, threshold: float) -> np.ndarray:
    """The numpy ``nms_`` applied to the final detections ``(k, 5)`` = (x1, y1, x2, y2, score):
    best score first, drop overlaps with IoU > ``threshold``. Returns kept indices."""
    if dets.shape[0] == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        others = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[others]) - np.maximum(x1[i], x1[others]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[others]) - np.maximum(y1[i], y1[others]))
        inter = w * h
        overlap = inter / (areas[i] + areas[others] - inter)
        order = others[overlap <= threshold]
    return np.asarray(keep, np.int64)


def detect(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, top_k: int = 750, nms_thresh: float = 0.3,
           conf_thresh: float = 0.05, nms_top_k: int = 5000) -> np.ndarray:
    """S3FD's ``Detect`` for one image: (P, 4) loc, (P, 2) softmaxed conf -> (2, top_k, 5) rows
    ``[score, x1, y1, x2, y2]`` (normalised), class 1 = face in NMS order, the rest zeros."""
    boxes = decode_boxes(np.asarray(loc, np.float32), np.asarray(priors, np.float32))
    scores = np.asarray(conf, np.float32)[:, 1]
    out = np.zeros((2, top_k, 5), np.float32)
    mask = scores > conf_thresh
    boxes, scores = boxes[mask], scores[mask]
    keep = nms_sorted(boxes, scores, nms_thresh, nms_top_k)[:top_k]
    out[1, :keep.size, 0] = scores[keep]
    out[1, :keep.size, 1:] = boxes[keep]
    return out


def faces_from_scores(boxes: np.ndarray, scores: np.ndarray, image_wh: tuple[int, int], conf_th: float,
                      top_k: int = 750, nms_thresh: float = 0.3, final_nms: float = 0.1) -> np.ndarray:
    """``detect_faces`` for one image from decoded boxes (P, 4, normalised) and face scores (P,):
    Detect's NMS, its rows scoring above ``conf_th``, scaled to pixels, then ``nms_(0.1)``.
    (Boxes below ``conf_th`` can never suppress one above it, so filtering first gives the
    same result as the full Detect with its 0.05 threshold.) -> (k, 5) float64 x1, y1, x2, y2, score."""
    mask = scores > conf_th
    boxes, scores = np.asarray(boxes[mask], np.float32), np.asarray(scores[mask], np.float32)
    keep = nms_sorted(boxes, scores, nms_thresh, 5000)[:top_k]
    w, h = image_wh
    pixels = boxes[keep] * np.array([w, h, w, h], np.float32)
    dets = np.concatenate([pixels, scores[keep, None]], axis=1).astype(np.float64)
    return dets[nms_boxes(dets, final_nms)]


def _dummy_input():
    return jnp.zeros((1, 64, 64, 3), jnp.float32)


def init_params(rng: jax.Array, config: S3FDConfig | None = None) -> dict[str, Any]:
    return S3FDNet(config or S3FDConfig()).init(rng, _dummy_input())["params"]


def abstract_params(config: S3FDConfig | None = None) -> dict[str, Any]:
    model = S3FDNet(config or S3FDConfig())
    return jax.eval_shape(lambda key: model.init(key, _dummy_input()), jax.random.key(0))["params"]
