"""Reading any COCO-format instance segmentation data set into tensors.

pycocotools parses the annotation file and decodes every segmentation kind (polygons,
compressed and uncompressed RLE); torchvision's v2 transforms resize and flip the image and its
masks together. What this module adds is the policy around them:

- COCO category ids (1..90 with gaps, or whatever a labelling tool wrote, 0 included) map to
  contiguous labels 0..C-1 and back (`CocoInstances.category_ids`);
- crowd regions (iscrowd=1) are not instances: they become one `ignore_mask` per image, so that
  training neither rewards nor punishes predictions there;
- degenerate annotations (polygons with fewer than 3 points, zero area, empty masks) are
  dropped in training, with a count in the log; in evaluation nothing is filtered, because
  pycocotools scores against the file as it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from pep.data.validate import missing_file_hint
from pep.errors import PepError
from pep.jsonfile import read_json

log = logging.getLogger(__name__)


def load_coco(annotation_file: str | Path, use: str = "scoring", with_annotations: bool = True) -> COCO:
    """pycocotools' COCO index, quietly, of a file that passes `pep data validate`'s checks
    (a PepError naming the file and its errors otherwise; `use` says for what: "training",
    "scoring"). The index also knows which categories are left out (`left_out_categories`).

    For pycocotools' sake two things change in memory, never on disk: annotation ids that
    include 0 are renumbered, and polygons of fewer than 3 points are removed (pycocotools
    reads a first polygon of 4 numbers as a box and refuses a shorter one); an annotation left
    without a polygon gets an empty mask, so that it is scored as a miss, not dropped.
    """
    import contextlib
    import io

    from pep.data.validate import check_before_use

    path = Path(annotation_file)
    dataset = read_json(path, "annotation file",
                        f"; `pep data validate --annotations {path} --images DIR` says more")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise PepError(f"{path}: not a COCO annotation file (no 'images' list)")
    left_out = check_before_use(dataset, path, use, with_annotations)
    annotations = dataset.setdefault("annotations", [])
    if any(a.get("id") == 0 for a in annotations):
        # COCOeval stores the id of a detection's matched ground truth and reads 0 as "no match",
        # so a true positive on annotation 0 would count as a false one; ids are ours to choose
        log.info("%s: annotation ids include 0; renumbered 1..%d for pycocotools", path.name, len(annotations))
        for number, ann in enumerate(annotations, 1):
            ann["id"] = number
    sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
    for ann in annotations:
        _make_rasterisable(ann, *sizes[ann["image_id"]])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    coco.left_out_categories = left_out
    if coco.left_out_categories:
        log.info("%s: left out %d unused category(ies) whose names repeat others': %s", path.name,
                 len(coco.left_out_categories),
                 ", ".join(f"id {c} ({why})" for c, why in coco.left_out_categories.items()))
    return coco


def left_out(coco: COCO) -> dict[int, str]:
    """The categories load_coco leaves out (unused duplicates of a name), {id: why}; none for
    a COCO index built by hand."""
    return getattr(coco, "left_out_categories", {})


def scored_categories(coco: COCO) -> list[int]:
    """The category ids that training learns and evaluation scores, sorted."""
    return [c for c in sorted(coco.getCatIds()) if c not in left_out(coco)]


def _make_rasterisable(ann: dict, height: int, width: int) -> None:
    """Polygons of fewer than 3 points out; none left: an empty RLE. The reason stays in
    `degenerate` for the training loader's log."""
    seg = ann["segmentation"]
    if not isinstance(seg, list) or all(len(p) >= 6 for p in seg) and seg:
        return
    kept = [p for p in seg if len(p) >= 6]
    ann["degenerate"] = "polygon with fewer than 3 points"
    if kept:
        ann["segmentation"] = kept
    else:
        rle = mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def degenerate_reason(ann: dict) -> str | None:
    """Why an annotation cannot be a training instance, from its record alone (None: fine)."""
    seg = ann.get("segmentation")
    if ann.get("degenerate") and not isinstance(seg, list):  # load_coco emptied it
        return ann["degenerate"]
    if isinstance(seg, list):
        if not any(isinstance(p, list) and len(p) >= 6 for p in seg):
            return "polygon with fewer than 3 points"
    elif not isinstance(seg, dict):
        return "no segmentation"
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    if ann.get("area", 0) <= 0 or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
        return "zero area"
    return None


@dataclass(frozen=True)
class InputSize:
    """How images are resized: the shorter side to one of `min_sizes` (random in training),
    the longer side capped at `max_size`."""

    min_sizes: tuple[int, ...]
    max_size: int
    flip_prob: float = 0.0

    @classmethod
    def from_params(cls, input_cfg: dict, train: bool) -> "InputSize":
        if train:
            return cls(tuple(input_cfg["train_min_size"]), input_cfg["max_size"], input_cfg["flip_prob"])
        return cls((input_cfg["test_min_size"],), input_cfg["max_size"], 0.0)

    def transforms(self) -> v2.Compose:
        steps: list = [v2.RandomShortestSize(list(self.min_sizes), max_size=self.max_size, antialias=True)]
        if self.flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(self.flip_prob))
        steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
        return v2.Compose(steps)


class CocoInstances(Dataset):
    """Images and instance targets of one COCO-format split.

    Each item is `(image, target)`: image a float tensor (3, H, W) in [0, 1] after resizing;
    target a dict with `image_id`, `labels` (N,) int64 contiguous labels, `masks` (N, H, W)
    uint8, `boxes` (N, 4) float xyxy from the masks, `ignore_mask` (H, W) uint8 (crowd
    regions), `orig_size` and `size` as (height, width).

    With `with_annotations=False` (test-dev's image_info file) targets hold no instances.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, size: InputSize,
                 train: bool, skip_empty: bool = False, with_annotations: bool = True):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.train = train
        self.with_annotations = with_annotations
        self.coco = load_coco(self.annotation_file, "training" if train else "scoring", with_annotations)
        self.category_ids = scored_categories(self.coco)
        if not self.category_ids:
            raise PepError(f"{self.annotation_file}: no categories")
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.transforms = size.transforms()

        self._anns: dict[int, list[dict]] = {}
        dropped: Counter[str] = Counter()
        for image_id in self.coco.getImgIds():
            kept = []
            for ann in self.coco.imgToAnns.get(image_id, []) if with_annotations else []:
                reason = degenerate_reason(ann) if train else None
                if reason and not ann.get("iscrowd"):
                    dropped[reason] += 1
                    continue
                kept.append(ann)
            self._anns[image_id] = kept
        if dropped:
            log.info("%s: dropped %d degenerate annotation(s) for training (%s)",
                     self.annotation_file.name, sum(dropped.values()),
                     ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())))
        self.dropped = dict(dropped)
        ids = sorted(self._anns)
        if train and skip_empty:
            ids = [i for i in ids if any(not a.get("iscrowd") for a in self._anns[i])]
            if len(ids) < len(self._anns):
                log.info("%s: %d image(s) without usable instances left out of training",
                         self.annotation_file.name, len(self._anns) - len(ids))
        if not ids:
            raise PepError(f"{self.annotation_file}: no images to use")
        self.image_ids = ids
        self._check_files_exist()

    def _check_files_exist(self) -> None:
        """Stop now, not hours into training, when image files are missing (one stat each)."""
        if not self.image_dir.is_dir():
            raise PepError(f"{self.image_dir}: image folder of {self.annotation_file.name} not found")
        missing = []
        for image_id in self.image_ids:
            name = self.coco.imgs[image_id].get("file_name")
            if not isinstance(name, str):
                raise PepError(f"{self.annotation_file}: image_id {image_id} has no 'file_name' string")
            if not (self.image_dir / name).is_file():
                missing.append(name)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more"
                                                                if len(missing) > 5 else "")
            raise PepError(f"{self.annotation_file}: {len(missing)} of {len(self.image_ids)} image file(s) "
                           f"missing in {self.image_dir}: {shown}{missing_file_hint(self.image_dir, missing[0])}; "
                           f"`pep data validate --annotations {self.annotation_file} --images "
                           f"{self.image_dir}` lists every problem")

    def __len__(self) -> int:
        return len(self.image_ids)

    def label_to_category_id(self, labels: torch.Tensor | list[int]) -> list[int]:
        return [self.category_ids[int(label)] for label in labels]

    def read_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:  # EXIF orientation is ignored on purpose: COCO's annotations ignore it too
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            what = ("missing" + missing_file_hint(self.image_dir, info["file_name"]) if not path.exists()
                    else f"unreadable ({exc})")
            raise PepError(f"{path}: image of image_id {image_id} in {self.annotation_file.name} "
                           f"is {what}") from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        height, width = image.shape[-2:]
        if (info.get("height"), info.get("width")) != (height, width):
            raise PepError(f"{path}: image is {width}x{height} but {self.annotation_file.name} says "
                           f"{info.get('width')}x{info.get('height')} for image_id {image_id}")
        return image

    def _decode(self, ann: dict, height: int, width: int) -> np.ndarray:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            seg = [p for p in seg if len(p) >= 6]  # pycocotools cannot rasterize shorter ones
            if not seg:
                return np.zeros((height, width), np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        return mask_utils.decode(rle)

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        image = self.read_image(image_id)
        height, width = image.shape[-2:]
        masks, labels = [], []
        ignore = np.zeros((height, width), np.uint8)
        for ann in self._anns[image_id]:
            m = self._decode(ann, height, width)
            if ann.get("iscrowd"):
                ignore |= m
            else:
                masks.append(m)
                labels.append(self.label_of[ann["category_id"]])
        mask_array = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        sample = {
            "image": tv_tensors.Image(image),
            "masks": tv_tensors.Mask(torch.from_numpy(mask_array)),
            "ignore_mask": tv_tensors.Mask(torch.from_numpy(ignore)[None]),
        }
        sample = self.transforms(sample)
        masks_t = sample["masks"].as_subclass(torch.Tensor)
        labels_t = torch.tensor(labels, dtype=torch.int64)
        if self.train:  # a mask can vanish when the image shrinks
            nonempty = masks_t.flatten(1).any(1).bool()
            masks_t, labels_t = masks_t[nonempty], labels_t[nonempty]
        boxes = masks_to_boxes(masks_t) if len(masks_t) else torch.zeros((0, 4))
        if len(boxes):
            boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel; boxes end one past it
        image_t = sample["image"].as_subclass(torch.Tensor)
        target = {
            "image_id": image_id,
            "labels": labels_t,
            "masks": masks_t.to(torch.uint8),
            "boxes": boxes.float(),
            "ignore_mask": sample["ignore_mask"].as_subclass(torch.Tensor)[0].to(torch.uint8),
            "orig_size": (int(height), int(width)),
            "size": tuple(image_t.shape[-2:]),
        }
        return image_t, target


def collate(batch: list, size_divisibility: int = 32):
    """Zero-pad images (and their masks) to a common size divisible by `size_divisibility`.

    Returns `(images (B, 3, H, W), targets)`; each target keeps its unpadded `size`.
    """
    heights = [img.shape[-2] for img, _ in batch]
    widths = [img.shape[-1] for img, _ in batch]
    div = size_divisibility
    H = -(-max(heights) // div) * div
    W = -(-max(widths) // div) * div
    images = torch.zeros((len(batch), 3, H, W), dtype=batch[0][0].dtype)
    targets = []
    for i, (img, tgt) in enumerate(batch):
        h, w = img.shape[-2:]
        images[i, :, :h, :w] = img
        pad = (0, W - w, 0, H - h)
        tgt = {**tgt, "masks": F.pad(tgt["masks"], pad), "ignore_mask": F.pad(tgt["ignore_mask"], pad)}
        targets.append(tgt)
    return images, targets


class Collate:
    """A picklable collate function for DataLoader workers."""

    def __init__(self, size_divisibility: int):
        self.size_divisibility = size_divisibility

    def __call__(self, batch):
        return collate(batch, self.size_divisibility)


def build_dataset(cfg: dict, split: str) -> CocoInstances:
    """The dataset of `split` (train | val | test-dev) as params.yaml describes it."""
    from pep.config import resolve_data_path

    data = cfg["data"]
    train = split == "train"
    files = {"train": ("train_annotations", "train_images"),
             "val": ("val_annotations", "val_images"),
             "test-dev": ("test_dev_info", "test_dev_images")}
    if split not in files:
        raise PepError(f"unknown split '{split}' (expected one of: {', '.join(files)})")
    ann_key, img_key = files[split]
    return CocoInstances(resolve_data_path(cfg, ann_key), resolve_data_path(cfg, img_key),
                         InputSize.from_params(data["input"], train), train=train,
                         skip_empty=train and data["train_skip_empty"],
                         with_annotations=split != "test-dev")
