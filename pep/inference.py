"""Applying a trained PEP model to one picture: the path `pep predict --images` and the MLflow
model share.

An image file (JPEG or PNG, any size, any mode, EXIF orientation applied) -> RGB -> the
test-time resize the model was trained for -> the model -> instances at the image's own size,
each with its mask, score, category id and name (`Segmentation`, whose `records` are COCO-style
result records: compressed RLE and [x, y, w, h] boxes).

It sits below both users (pep.engine.segment, pep.tracking.model), so that neither imports the
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import tv_tensors

from pep import evaluation
from pep.data.coco import InputSize
from pep.errors import PepError


def read_image(path: str | Path) -> np.ndarray:
    """The picture as a person sees it: (H, W, 3) uint8 RGB, EXIF orientation applied, grey and
    16-bit images scaled to 8 bits, transparency laid on white. OSError and PIL's errors pass
    through for the caller to name the file."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grey: stretch to 8 bits
            grey = np.asarray(im, dtype=np.float64)
            top = grey.max() if grey.size else 0.0
            im = Image.fromarray((grey / top * 255 if top > 0 else grey).astype(np.uint8))
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA"):
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im.convert("RGBA"))
        return np.asarray(im.convert("RGB")).copy()


@dataclass
class Segmentation:
    """One image's instances, highest score first: masks (K, H, W) bool at the image's size."""
    masks: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    category_names: list[str]

    def records(self, file_name: str) -> list[dict]:
        """COCO-style result records of the instances, keyed by file name instead of image id
        (pep.evaluation's encoding and boxes)."""
        height, width = self.masks.shape[1:]
        coco = evaluation.add_boxes(evaluation.encode_instances(0, self.masks, self.scores, self.category_ids))
        return [{"file_name": file_name, "width": int(width), "height": int(height),
                 "category_id": r["category_id"], "category_name": name, "score": r["score"],
                 "segmentation": r["segmentation"], "bbox": r["bbox"]}
                for r, name in zip(coco, self.category_names)]

    def above(self, threshold: float) -> "Segmentation":
        keep = self.scores >= threshold
        return Segmentation(self.masks[keep], self.scores[keep], self.category_ids[keep],
                            [n for n, k in zip(self.category_names, keep) if k])


class Segmenter:
    """A trained PEP model with the test-time resize it was trained for, applied to one image."""

    def __init__(self, model: torch.nn.Module, input_cfg: dict, class_names: list[str],
                 device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        self.resize = InputSize.from_params(input_cfg, train=False).transforms()
        self.divisibility = int(input_cfg["size_divisibility"])
        ids = [int(i) for i in model.category_ids.tolist()]
        if len(class_names) != len(ids):
            raise PepError(f"the model has {len(ids)} categories but {len(class_names)} names")
        self.names = dict(zip(ids, class_names))

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> Segmentation:
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        height, width = image.shape[-2:]
        resized = self.resize({"image": tv_tensors.Image(image)})["image"].as_subclass(torch.Tensor)
        h, w = resized.shape[-2:]
        div = self.divisibility
        batch = F.pad(resized, (0, -(-w // div) * div - w, 0, -(-h // div) * div - h))[None]
        target = {"image_id": 0, "orig_size": (int(height), int(width)), "size": (int(h), int(w))}
        out = self.model(batch.to(self.device), [target])[0]
        order = torch.argsort(out["scores"], descending=True).cpu()
        ids = out["category_ids"].cpu()[order].numpy()
        return Segmentation(out["masks"].cpu()[order].numpy().astype(bool), out["scores"].cpu()[order].numpy(),
                            ids, [self.names[int(i)] for i in ids])
