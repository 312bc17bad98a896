"""The whole of Fig. 2: feature extractor -> perceiving -> excavating -> purifying -> masks.

`build_model(cfg, variant, category_ids)` makes any of the four ablation variants; a module a
variant turns off is not built, so it costs nothing and holds no parameters that never train.

Training: `model(images, targets)` returns a dict of losses (Eq. 8 is their sum).
Inference: `model(images, targets)` in eval mode returns, per image, `masks` (K, H0, W0) bool
at the original size, `labels` (contiguous), `category_ids` (the data set's ids) and `scores`,
K <= max_detections, best first. Targets then only need `size` and `orig_size`.
"""

from __future__ import annotations

import torch
from torch import nn

from pep.model.backbone import FeatureExtractor
from pep.model.descriptors import Descriptors
from pep.model.excavate import ObjectExcavating
from pep.model.mask import MASK_STRIDE, MaskLearning, downsample_masks
from pep.model.perceive import SemanticsPerceiving
from pep.model.postprocess import masks_to_image, matrix_nms
from pep.model.purify import InstancePurifying
from pep.model.scopes import scope


class PEP(nn.Module):
    def __init__(self, model_cfg: dict, variant_cfg: dict, category_ids: list[int], variant: str = ""):
        super().__init__()
        m = model_cfg
        self.cfg = m
        self.variant = variant
        self.variant_cfg = dict(variant_cfg)
        self.num_classes = len(category_ids)
        self.register_buffer("category_ids", torch.tensor(category_ids, dtype=torch.int64), persistent=True)
        head, levels, d = m["head"], m["levels"], m["descriptor_dim"]
        bb = m["backbone"]
        self.features = FeatureExtractor(bb["depth"], bb["pretrained"], bb["trainable_layers"], bb["norm"],
                                         m["fpn_channels"], levels["features"])
        self.perceive = SemanticsPerceiving(m["fpn_channels"], self.num_classes, levels["grids"],
                                            levels["scale_ranges"], head["channels"], head["convs"],
                                            head["norm_groups"], d, m["perceive"])
        self.excavate = ObjectExcavating(head["channels"], d, head["channels"], self.num_classes,
                                         levels["grids"], m["excavate"]) \
            if variant_cfg["excavate"] else None
        self.purify = InstancePurifying(d, m["purify"]["embed_dim"], m["purify"]) \
            if variant_cfg["purify"] else None
        self.mask = MaskLearning(m["fpn_channels"], d, head["norm_groups"], m["mask"]["dice_eps"])

    def forward(self, images: torch.Tensor, targets: list[dict]):
        context, logits, desc_maps, feature = self._shared(images)
        if self.training:
            return self._losses(images, targets, context, logits, desc_maps, feature)
        return self._predict(targets, context, logits, desc_maps, feature)

    def _shared(self, images: torch.Tensor):
        """What training and every inference switch share: features, perceiving's maps, the
        general feature."""
        fpn = self.features(images)
        with scope("perceiving"):
            context, logits, desc_maps = self.perceive(self.features.level_features(fpn))
        with scope("mask_learning.feature"):
            feature = self.mask.general_feature(fpn)
        return context, logits, desc_maps, feature

    # --- training ---

    def _losses(self, images, targets, context, logits, desc_maps, feature) -> dict[str, torch.Tensor]:
        size = tuple(images.shape[-2:])
        with scope("perceiving.targets"):
            level_targets = self.perceive.targets(targets, size)
            gt_masks = downsample_masks(torch.cat([t["masks"] for t in targets]))
        counts = torch.tensor([len(t["labels"]) for t in targets], device=images.device)
        gt_offsets = counts.cumsum(0) - counts  # image b's instances start here in the flat lists
        with scope("perceiving.loss"):
            losses = {"loss_sem": self.perceive.loss(logits, level_targets)}
        with scope("perceiving.select"):
            originals = self.perceive.select_training(desc_maps, logits, level_targets)
        parts = [originals]
        if self.excavate is not None:
            with scope("excavating"):
                mined, loss_centre, loss_class = self.excavate.training_step(
                    context, originals, level_targets, torch.cat([t["labels"] for t in targets]), gt_offsets,
                    feature)
            parts.append(mined)
            losses["loss_exc"] = self.cfg["excavate"]["loss_weight"] * loss_centre
            losses["loss_exc_cls"] = self.cfg["excavate"]["cls_loss_weight"] * loss_class
        descriptors = Descriptors.cat(parts)
        if self.purify is not None:
            with scope("purifying"):
                losses["loss_pur"] = self.cfg["purify"]["loss_weight"] * self.purify.loss(descriptors)
        with scope("mask_learning.loss"):
            losses["loss_mask"] = self.cfg["mask"]["loss_weight"] * self.mask.loss(feature, descriptors, gt_masks,
                                                                                    gt_offsets)
        return losses

    # --- inference ---

    @torch.no_grad()
    def predict(self, images: torch.Tensor, targets: list[dict], mine: bool = True,
                dedup: str | None = None, trace: bool = False) -> list[dict]:
        """Detections per image (the eval-mode forward). The mechanism report switches a module's
        inference off on the same trained model: `mine=False` skips excavating's mining,
        `dedup` replaces the variant's de-duplication (matrix_nms | purify_merge). `trace` adds
        each image's descriptors before de-duplication, their masks, the merge's groups, which
        descriptor each detection came from and, with mining, excavating's key map (the cells
        and window centre probabilities of the originals that excavated)."""
        return self.predict_switches(images, targets, {"": (mine, dedup, trace)})[""]

    @torch.no_grad()
    def predict_switches(self, images: torch.Tensor, targets: list[dict],
                         switches: dict[str, tuple[bool, str | None, bool]]) -> dict[str, list[dict]]:
        """`predict` under several (mine, dedup, trace) switches, by name, from one pass of the
        backbone, FPN and perceiving: no switch changes them."""
        context, logits, desc_maps, feature = self._shared(images)
        return {name: self._predict(targets, context, logits, desc_maps, feature, mine, dedup, trace)
                for name, (mine, dedup, trace) in switches.items()}

    @torch.no_grad()
    def _predict(self, targets, context, logits, desc_maps, feature, mine=True, dedup=None,
                 trace=False) -> list[dict]:
        with scope("perceiving.select"):
            originals = self.perceive.select_inference(desc_maps, logits)
        parts = [originals]
        if self.excavate is not None and mine and len(originals):
            with scope("excavating"):
                parts.append(self.excavate.mine(context, originals, feature))
        descriptors = Descriptors.cat(parts)
        dedup = dedup or self.variant_cfg["dedup"]
        if dedup == "purify_merge" and self.purify is None:
            raise ValueError(f"variant '{self.variant}' has no purifying module to merge with")
        out = [self._predict_image(descriptors.select(descriptors.image == b), feature, t, dedup, trace)
               for b, t in enumerate(targets)]
        if trace and self.excavate is not None and mine:
            src, prob, _, _ = self.excavate.key_map(context, originals)
            for b, image_out in enumerate(out):
                rows = src.image == b
                image_out["trace"]["key_map"] = {"level": src.level[rows], "cell_y": src.cell_y[rows],
                                                 "cell_x": src.cell_x[rows], "prob": prob[rows]}
        return out

    def _predict_image(self, d: Descriptors, feature: torch.Tensor, target: dict, dedup: str,
                       trace: bool) -> dict:
        inf = self.cfg["inference"]
        h = -(-target["size"][0] // MASK_STRIDE)
        w = -(-target["size"][1] // MASK_STRIDE)

        def mask_probs(descriptors: Descriptors) -> torch.Tensor:
            with scope("mask_learning.masks"):
                probs = MaskLearning.mask_logits(feature, descriptors).sigmoid()
                probs[:, h:, :] = 0  # nothing of an instance lies in the batch's padding
                probs[:, :, w:] = 0
            return probs

        all_probs = mask_probs(d)
        source = torch.arange(len(d), device=d.kernels.device)  # each candidate's row in d
        groups = None
        if dedup == "purify_merge" and len(d):
            with scope("purifying"):
                source, groups = self.purify.merge(d, all_probs > inf["mask_threshold"])
                merged = d.select(source)
                if self.cfg["purify"]["merge_rule"] == "seed":
                    probs = all_probs[source]
                else:
                    merged.kernels = self.purify.merged_kernels(d, groups)
                    probs = mask_probs(merged)
        else:
            merged, probs = d, all_probs
        with scope("postprocess"):
            out, order = self._rescore_and_resize(probs, merged, target, dedup)
        source = source[order]
        if trace:
            with scope("postprocess"):
                out["trace"] = {"descriptors": d, "groups": groups, "source": source,
                                "masks": masks_to_image(all_probs, target["size"], target["orig_size"],
                                                        MASK_STRIDE, inf["mask_threshold"])}
        return out

    def _rescore_and_resize(self, probs: torch.Tensor, merged: Descriptors, target: dict,
                            dedup: str) -> tuple[dict, torch.Tensor]:
        """SOLOv2's tail: drop tiny masks, score by maskness, Matrix NMS, the best
        `max_detections` at the image's size. Returns them and their rows in `merged`."""
        inf = self.cfg["inference"]
        binary = probs > inf["mask_threshold"]
        area = binary.flatten(1).sum(1)
        keep = torch.nonzero(area > inf["min_mask_pixels"]).squeeze(1)
        probs, binary, area, merged = probs[keep], binary[keep], area[keep], merged.select(keep)
        maskness = (probs * binary).flatten(1).sum(1) / area.clamp(min=1)
        scores = merged.scores * maskness
        order = torch.argsort(scores, descending=True)
        if dedup == "matrix_nms" or self.cfg["purify"]["then_matrix_nms"]:
            order = order[: inf["matrix_nms"]["pre_nms_top_k"]]
            scores = matrix_nms(binary[order], merged.labels[order], scores[order],
                                inf["matrix_nms"]["kernel"], inf["matrix_nms"]["sigma"])
        else:
            scores = scores[order]
        passed = scores >= inf["score_threshold"]
        order, scores = order[passed], scores[passed]
        top = torch.argsort(scores, descending=True)[: inf["max_detections"]]
        order, scores = order[top], scores[top]
        masks = masks_to_image(probs[order], target["size"], target["orig_size"], MASK_STRIDE,
                               inf["mask_threshold"])
        labels = merged.labels[order]
        return {"masks": masks, "labels": labels, "category_ids": self.category_ids[labels],
                "scores": scores, "mined": merged.mined[order]}, keep[order]


def build_model(cfg: dict, variant: str, category_ids: list[int]) -> PEP:
    """One of the four ablation variants, as params.yaml describes it."""
    if variant not in cfg["variants"]:
        from pep.errors import PepError
        raise PepError(f"unknown variant '{variant}' (expected one of: {', '.join(cfg['variants'])})")
    return PEP(cfg["model"], cfg["variants"][variant], category_ids, variant=variant)
