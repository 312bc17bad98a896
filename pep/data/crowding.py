"""How crowded a data set is for perceiving: the instances that own no grid cell.

SOLOv2's assignment, as perceiving trains it, gives each grid cell of an instance's centre
region to the smallest instance claiming it; an instance all of whose cells go to smaller ones
has no original descriptor of its own. Those are the instances excavating exists for, so the
data report (`pep data validate --split`) and the mechanism report (`pep mechanisms`) count them.
"""

from __future__ import annotations

from pep.data.coco import InputSize, build_dataset
from pep.model.detector import build_model


def hidden_instances(cfg: dict, split: str, model=None) -> dict:
    """Instances of `split` (at the test-time size) that own no grid cell: every cell of their
    centre region goes to a smaller instance (SOLOv2's assignment, as perceiving trains)."""
    dataset = build_dataset(cfg, split)
    dataset.transforms = InputSize.from_params(cfg["data"]["input"], train=False).transforms()  # no flip, one size
    if model is None:
        model = build_model(cfg, "baseline", sorted(dataset.coco.getCatIds()))
    divisor = cfg["data"]["input"]["size_divisibility"]
    hidden = total = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        h, w = image.shape[-2:]
        size = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
        owners = model.perceive.targets([target], size)[0].gt_index
        n = len(target["labels"])
        total += n
        hidden += n - len(set(owners[owners >= 0].tolist()))
    return {"instances": total, "without_own_cell": hidden, "share": round(hidden / total, 4) if total else None}
