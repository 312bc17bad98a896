"""How crowded a data set is for perceiving, in the two ways PEP's modules are for.

- *Hidden* instances (excavating's): SOLOv2's assignment, as perceiving trains it, gives each
  grid cell of an instance's centre region to the smallest instance claiming it; an instance
  all of whose cells go to smaller ones has no original descriptor of its own.
- *Overlapping* same-class pairs (the de-duplication's): two instances of one class whose boxes
  overlap by IoU >= 0.5 (CrowdHuman's crowding measure). Masks that a model predicts for such a
  pair overlap as their boxes do wherever a prediction fills the gaps (a ring predicted as a
  disc), and Matrix NMS then suppresses one of two true instances.

The data report (`pep data validate --split`), the mechanism report (`pep mechanisms`) and
`pep data crowding` (every synthetic crowding level, and a COCO-layout folder) count both.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import torch
from torchvision.ops import box_iou

from pep.data.coco import InputSize, build_dataset
from pep.model.detector import build_model

OVERLAP_IOU = 0.5


def hidden_instances(cfg: dict, split: str, model=None) -> dict:
    """Instances of `split` (at the test-time size) that own no grid cell: every cell of their
    centre region goes to a smaller instance (SOLOv2's assignment, as perceiving trains); and
    instances in a same-class pair whose boxes overlap by IoU >= OVERLAP_IOU."""
    dataset = build_dataset(cfg, split)
    dataset.transforms = InputSize.from_params(cfg["data"]["input"], train=False).transforms()  # no flip, one size
    if model is None:  # only its assignment is used: no weights to fetch
        bare = copy.deepcopy(cfg)
        bare["model"]["backbone"].update(depth=18, pretrained=False)
        model = build_model(bare, "baseline", sorted(dataset.coco.getCatIds()))
    divisor = cfg["data"]["input"]["size_divisibility"]
    hidden = total = overlapping = pairs = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        h, w = image.shape[-2:]
        size = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
        owners = model.perceive.targets([target], size)[0].gt_index
        n = len(target["labels"])
        total += n
        hidden += n - len(set(owners[owners >= 0].tolist()))
        in_pair = overlapping_same_class(target["boxes"], target["labels"])
        overlapping += int(in_pair.any(1).sum())
        pairs += int(in_pair.triu(1).sum())
    share = lambda k: round(k / total, 4) if total else None  # noqa: E731
    return {"instances": total, "without_own_cell": hidden, "share": share(hidden),
            "overlapping_same_class": overlapping, "overlapping_share": share(overlapping),
            "overlapping_pairs": pairs, "overlap_iou": OVERLAP_IOU}


def overlapping_same_class(boxes: torch.Tensor, labels: torch.Tensor, iou: float = OVERLAP_IOU) -> torch.Tensor:
    """(N, N) bool: instances i != j of one class whose boxes overlap by IoU >= `iou`."""
    pair = (box_iou(boxes, boxes) >= iou) & (labels[:, None] == labels[None, :])
    return pair & ~torch.eye(len(labels), dtype=torch.bool)


def summary_line(figures: dict) -> str:
    return (f"{figures['without_own_cell']} of {figures['instances']} instances "
            f"({100 * (figures['share'] or 0):.1f}%) own no grid cell (every cell of their centre region "
            f"goes to a smaller instance); {figures['overlapping_same_class']} "
            f"({100 * (figures['overlapping_share'] or 0):.1f}%) are in one of {figures['overlapping_pairs']} "
            f"same-class pairs whose boxes overlap by IoU >= {figures['overlap_iou']}")


def crowding_command(cfg: dict, levels: list[str] | None, coco_root: Path | None, coco_cfg: dict | None,
                     split: str, report_path: Path | None, progress: bool = True) -> int:
    """`pep data crowding`: the crowding figures of `split` for each synthetic crowding level
    (each generated alone, into a temporary folder) and, given `coco_root`, for that COCO-layout
    folder under `coco_cfg` (the coco profile's grids and sizes)."""
    from pep.config import project_relative
    from pep.data.synth import generate
    from pep.errors import PepError
    from pep.jsonfile import StagedOutputs

    synth = cfg["data"]["synth"]
    levels = list(synth["crowding_levels"]) if levels is None else levels
    unknown = [level for level in levels if level not in synth["crowding_levels"]]
    if unknown:
        raise PepError(f"--level {', '.join(unknown)}: not in data.synth.crowding_levels "
                       f"({', '.join(synth['crowding_levels'])})")
    outputs = StagedOutputs([report_path], "`pep data crowding --report`") if report_path else None
    rows: dict[str, dict] = {}
    for level in levels:
        work = Path(tempfile.mkdtemp(prefix=f"pep-crowding-{level}-"))
        try:
            level_cfg = copy.deepcopy(cfg)
            level_cfg["data"]["synth"]["crowding"] = level
            generate(level_cfg["data"]["synth"], work / "set", progress=progress)
            level_cfg["data"].update(source="synth", root=str(work / "set"))
            rows[f"synth {level}"] = hidden_instances(level_cfg, split)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"synth {level:>8}: {summary_line(rows[f'synth {level}'])}")
    if coco_root is not None:
        if not Path(coco_root).is_dir():
            raise PepError(f"--coco-root {coco_root}: no such folder")
        real_cfg = copy.deepcopy(coco_cfg)
        real_cfg["data"]["root"] = str(Path(coco_root).resolve())
        name = f"coco {project_relative(cfg, Path(coco_root))}"
        rows[name] = hidden_instances(real_cfg, split)
        print(f"{name}: {summary_line(rows[name])}")
    if outputs:
        with outputs:
            outputs.write_json(report_path, {"split": split, "sets": rows})
            outputs.publish()
    return 0
