"""`pep mechanisms`: what each of PEP's modules finds, merges or loses, on the model's own outputs.

For every seed's model of a variant, on val, from the descriptors before de-duplication and the
detections after it (`PEP.predict(trace=True)`), every mask matched to the ground truth at mask
IoU >= 0.5 with the same class (pycocotools' mask IoU; iscrowd regions are ignored, as COCO
does). Written to metrics/<variant>/mechanisms.json:

  perceiving   instances matched by some original descriptor; by the final detections
  excavating   mined descriptors per image; the mined detections that are new true positives
               (an instance no original matches), true positives of an instance an original also
               matches, duplicates (their instance already taken by a better detection),
               background; the share of the instances originals miss that a mined descriptor
               matches (before de-duplication) and that a mined detection wins (after it)
  purifying    over pairs of same-class descriptors that each match an instance: merge recall
               (pairs on one instance that the merge joins) and the false-merge rate (pairs on
               two instances that it joins); instances fused (per group, the distinct instances
               among its members beyond the first); instances lost by de-duplication (matched
               by a descriptor, by no detection); duplicates left among the detections
  switches     mask AP of the same model with each module's inference off: no mining, Matrix
               NMS instead of the merge (and both), beside the AP as trained
  hidden       the instances that own no grid cell at the batch's size, stage by stage: an
               original matches them; excavating's key map responds at their centre (above
               key_threshold); a mined descriptor matches them; a detection does; how often a
               mined duplicate outscores their best mined match
  similarity   (purifying) ROC AUC of the learned similarity, same- against different-instance
               pairs of same-class descriptors, where their masks overlap (IoU >= 0.5) and where
               not; the true instances the merge keeps and Matrix NMS loses, and the reverse
  data         per split, the instances that own no grid cell (every cell of their centre
               region won by a smaller instance), so perceiving has no descriptor of their own,
               and those in an overlapping same-class pair (pep.data.crowding)

`count_image`, `count_hidden`, `key_response_at`, `count_similarity` and `count_dedup_difference`
are per-image counts, pure functions of masks, classes and scores, so that tests can check them
against cases with known answers.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from pep import evaluation
from pep.config import output_path
from pep.data.coco import Collate, build_dataset
from pep.data.crowding import hidden_instances
from pep.engine.train import load_trained
from pep.jsonfile import StagedOutputs
from pep.progress import ProgressLog

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
# (name, mine, dedup) per inference switch; None = the variant's own
SWITCHES = {"as_trained": (True, None), "no_mining": (False, None), "matrix_nms": (True, "matrix_nms"),
            "neither": (False, "matrix_nms")}


def _iou(masks: np.ndarray, gt_masks: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """(N, G) mask IoU by pycocotools; against an iscrowd region, the share of the mask inside it."""
    if not len(masks) or not len(gt_masks):
        return np.zeros((len(masks), len(gt_masks)))
    encode = lambda m: mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))  # noqa: E731
    return np.asarray(mask_utils.iou(encode(masks), encode(gt_masks), [int(c) for c in gt_crowd]),
                      dtype=np.float64).reshape(len(masks), len(gt_masks))


def _assign(iou: np.ndarray, classes: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray):
    """Each mask's instance (best same-class IoU >= MATCH_IOU, -1 none), and whether an
    unmatched mask lies on a same-class iscrowd region (ignored, as COCO ignores it)."""
    same = classes[:, None] == gt_classes[None, :]
    hits = (iou >= MATCH_IOU) & same
    real = np.where(hits & ~gt_crowd[None, :], iou, -1.0)
    instance = np.where(real.max(1, initial=-1.0) >= MATCH_IOU, real.argmax(1) if real.size else -1, -1)
    crowd = (instance < 0) & (hits & gt_crowd[None, :]).any(1)
    return instance, crowd, hits & ~gt_crowd[None, :]


def count_image(gt_masks: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray,
                desc_masks: np.ndarray, desc_classes: np.ndarray, desc_mined: np.ndarray,
                groups: list[list[int]] | None,
                det_masks: np.ndarray, det_classes: np.ndarray, det_mined: np.ndarray) -> Counter:
    """One image's counts (see the module). Masks are (n, H, W) bool at one size; detections
    come best first; `groups` are the merge's groups of descriptor rows (None: no merge)."""
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    desc_mined, det_mined = np.asarray(desc_mined, dtype=bool), np.asarray(det_mined, dtype=bool)
    real = ~gt_crowd
    c = Counter(images=1, instances=int(real.sum()), descriptors=len(desc_masks),
                mined_descriptors=int(desc_mined.sum()), detections=len(det_masks))

    desc_instance, _, desc_hits = _assign(_iou(desc_masks, gt_masks, gt_crowd), desc_classes, gt_classes, gt_crowd)
    by_originals = desc_hits[~desc_mined].any(0)
    by_mined = desc_hits[desc_mined].any(0)
    by_descriptors = by_originals | by_mined
    det_iou = _iou(det_masks, gt_masks, gt_crowd)
    _, det_crowd, det_hits = _assign(det_iou, det_classes, gt_classes, gt_crowd)
    by_detections = det_hits.any(0)
    c["found_by_originals"] = int((by_originals & real).sum())
    c["found_by_descriptors"] = int((by_descriptors & real).sum())
    c["found_final"] = int((by_detections & real).sum())
    c["missed_by_originals"] = int((~by_originals & real).sum())
    c["recovered_by_mined"] = int((~by_originals & by_mined & real).sum())
    c["lost_by_dedup"] = int((by_descriptors & ~by_detections & real).sum())

    # COCO's greedy matching, best detection first: each instance is taken once
    taken = np.zeros(len(gt_masks), dtype=bool)
    for k in range(len(det_masks)):
        free = det_hits[k] & ~taken
        if free.any():
            g = int(np.argmax(np.where(free, det_iou[k], -1.0)))
            taken[g] = True
            kind = "tp"
            if det_mined[k]:
                kind = "tp_known" if by_originals[g] else "new_tp"
                c["recovered_final"] += int(not by_originals[g])
        elif det_hits[k].any():
            kind = "duplicate"
            c["duplicates_left"] += 1
        elif det_crowd[k]:
            kind = "crowd"
        else:
            kind = "background"
            c["background_detections"] += 1
        if det_mined[k]:
            c["mined_detections"] += 1
            c[f"mined_{kind}"] += 1

    if groups is not None:
        group_of = np.full(len(desc_masks), -1)
        for gid, members in enumerate(groups):
            group_of[members] = gid
            instances = {int(desc_instance[m]) for m in members if desc_instance[m] >= 0}
            c["instances_fused"] += max(0, len(instances) - 1)
        i, j = np.triu_indices(len(desc_masks), k=1)
        on_instances = (desc_classes[i] == desc_classes[j]) & (desc_instance[i] >= 0) & (desc_instance[j] >= 0)
        i, j = i[on_instances], j[on_instances]
        same, joined = desc_instance[i] == desc_instance[j], group_of[i] == group_of[j]
        c["same_instance_pairs"] += int(same.sum())
        c["same_instance_joined"] += int((same & joined).sum())
        c["different_instance_pairs"] += int((~same).sum())
        c["different_instance_joined"] += int((~same & joined).sum())
    return c


def key_response_at(centres: np.ndarray, level: np.ndarray, cell_y: np.ndarray, cell_x: np.ndarray,
                    prob: np.ndarray) -> np.ndarray:
    """(G,) the highest centre probability that excavating's key map gives each instance's centre
    cell: over the levels the instance is on (`centres` (G, L, 2), -1 off-level) and the windows
    (`prob` (n, K, K) around cells (level, cell_y, cell_x)) that hold that cell; 0 where none does.
    A window's own cell reads 0, as mining never takes it."""
    r = prob.shape[-1] // 2
    out = np.zeros(len(centres))
    for g, on_levels in enumerate(centres):
        for l, (y, x) in enumerate(on_levels):
            if y < 0:
                continue
            rows = np.flatnonzero(level == l)
            dy, dx = y - cell_y[rows], x - cell_x[rows]
            inside = (np.abs(dy) <= r) & (np.abs(dx) <= r)
            if inside.any():
                out[g] = max(out[g], float(prob[rows[inside], dy[inside] + r, dx[inside] + r].max()))
    return out


def count_hidden(gt_masks: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray, hidden: np.ndarray,
                 key_response: np.ndarray | None, key_threshold: float,
                 desc_masks: np.ndarray, desc_classes: np.ndarray, desc_mined: np.ndarray, desc_scores: np.ndarray,
                 det_masks: np.ndarray, det_classes: np.ndarray) -> Counter:
    """Excavating, stage by stage, on the instances that own no grid cell (`hidden`, per ground
    truth row): does its key map respond at their centre (above `key_threshold`; None: no
    excavating), does a mined descriptor's mask match them, does a detection; and how a matching
    mined descriptor's score ranks against the mined duplicates (mined descriptors on an instance
    an original already matches): `hidden_outranked` of `hidden_rank_pairs` such pairs put the
    duplicate first."""
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    hidden = np.asarray(hidden, dtype=bool) & ~gt_crowd
    desc_mined = np.asarray(desc_mined, dtype=bool)
    c = Counter(hidden=int(hidden.sum()))
    _, _, desc_hits = _assign(_iou(desc_masks, gt_masks, gt_crowd), desc_classes, gt_classes, gt_crowd)
    _, _, det_hits = _assign(_iou(det_masks, gt_masks, gt_crowd), det_classes, gt_classes, gt_crowd)
    by_originals = desc_hits[~desc_mined].any(0)
    by_mined = desc_hits[desc_mined].any(0)
    if key_response is not None:
        c["hidden_key_response"] = int((hidden & (np.asarray(key_response) > key_threshold)).sum())
    c["hidden_found_by_originals"] = int((hidden & by_originals).sum())
    c["hidden_mined_match"] = int((hidden & by_mined).sum())
    c["hidden_found_final"] = int((hidden & det_hits.any(0)).sum())
    mined_rows = np.flatnonzero(desc_mined)
    duplicate_scores = desc_scores[mined_rows[desc_hits[mined_rows][:, by_originals].any(1)]]
    for g in np.flatnonzero(hidden & by_mined):
        best = desc_scores[mined_rows[desc_hits[mined_rows, g]]].max()
        c["hidden_rank_pairs"] += len(duplicate_scores)
        c["hidden_outranked"] += int((duplicate_scores > best).sum())
    return c


SIMILARITY_BINS = 100


def count_similarity(gt_masks: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray,
                     desc_masks: np.ndarray, desc_classes: np.ndarray, similarity: np.ndarray) -> Counter:
    """Purifying's learned similarity on pairs of same-class descriptors that each match an
    instance, as histograms (SIMILARITY_BINS bins over [0, 1]) of same-instance and
    different-instance pairs, split by whether the two descriptors' masks overlap as Matrix NMS
    sees them (mask IoU >= MATCH_IOU): `summarise` turns them into ROC AUCs."""
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    instance, _, _ = _assign(_iou(desc_masks, gt_masks, gt_crowd), desc_classes, gt_classes, gt_crowd)
    i, j = np.triu_indices(len(desc_masks), k=1)
    on = (desc_classes[i] == desc_classes[j]) & (instance[i] >= 0) & (instance[j] >= 0)
    i, j = i[on], j[on]
    c = Counter()
    if not len(i):
        return c
    rows = np.unique(np.concatenate([i, j]))
    flat = torch.from_numpy(desc_masks[rows].reshape(len(rows), -1)).float()
    inter = flat @ flat.T  # pixel counts are exact in float32 up to 2^24
    area = flat.sum(1)
    iou = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1)).numpy()
    at = np.searchsorted(rows, np.arange(len(desc_masks)))  # descriptor row -> row of `iou`
    overlap = iou[at[i], at[j]] >= MATCH_IOU
    bins = np.minimum((similarity[i, j] * SIMILARITY_BINS).astype(int), SIMILARITY_BINS - 1)
    for same, ov, b in zip(instance[i] == instance[j], overlap, bins):
        c[f"sim_{'same' if same else 'diff'}_{'overlap' if ov else 'apart'}_{b:02d}"] += 1
    return c


def count_dedup_difference(gt_masks: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray, hidden: np.ndarray,
                           merge_masks: np.ndarray, merge_classes: np.ndarray,
                           nms_masks: np.ndarray, nms_classes: np.ndarray) -> Counter:
    """The true instances that one de-duplication keeps and the other loses, on the same model's
    descriptors: the merge's detections against Matrix NMS's (and among the hidden instances)."""
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    hidden = np.asarray(hidden, dtype=bool) & ~gt_crowd
    found = {}
    for name, masks, classes in (("merge", merge_masks, merge_classes), ("nms", nms_masks, nms_classes)):
        _, _, hits = _assign(_iou(masks, gt_masks, gt_crowd), classes, gt_classes, gt_crowd)
        found[name] = hits.any(0) & ~gt_crowd
    only_merge, only_nms = found["merge"] & ~found["nms"], found["nms"] & ~found["merge"]
    return Counter(kept_by_merge_lost_by_nms=int(only_merge.sum()), kept_by_nms_lost_by_merge=int(only_nms.sum()),
                   hidden_kept_by_merge_lost_by_nms=int((only_merge & hidden).sum()),
                   hidden_kept_by_nms_lost_by_merge=int((only_nms & hidden).sum()))


def _auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """ROC AUC from two histograms over the same bins (Mann-Whitney; a shared bin counts half)."""
    total = positive.sum() * negative.sum()
    if not total:
        return None
    below = np.cumsum(negative) - negative
    return round(float((positive * (below + 0.5 * negative)).sum() / total), 4)


def _similarity_aucs(counts: Counter) -> tuple[dict, dict]:
    hist = {(same, ov): np.array([counts.get(f"sim_{same}_{ov}_{b:02d}", 0) for b in range(SIMILARITY_BINS)])
            for same in ("same", "diff") for ov in ("overlap", "apart")}
    same_all = hist["same", "overlap"] + hist["same", "apart"]
    pairs = {f"{same}_instance_{ov}_pairs": int(h.sum()) for (same, ov), h in hist.items()}
    aucs = {"similarity_auc": _auc(same_all, hist["diff", "overlap"] + hist["diff", "apart"]),
            "similarity_auc_overlapping": _auc(hist["same", "overlap"], hist["diff", "overlap"]),
            "similarity_auc_apart": _auc(hist["same", "apart"], hist["diff", "apart"])}
    return pairs, aucs


# every count, reported even where no image added to it
COUNT_KEYS = ("images", "instances", "descriptors", "mined_descriptors", "detections", "found_by_originals",
              "found_by_descriptors", "found_final", "missed_by_originals", "recovered_by_mined",
              "recovered_final", "lost_by_dedup", "duplicates_left", "background_detections",
              "mined_detections", "mined_new_tp", "mined_tp_known", "mined_duplicate", "mined_background",
              "mined_crowd")
MERGE_KEYS = ("same_instance_pairs", "same_instance_joined", "different_instance_pairs",
              "different_instance_joined", "instances_fused")


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


HIDDEN_KEYS = ("hidden", "hidden_found_by_originals", "hidden_mined_match", "hidden_found_final",
               "hidden_rank_pairs", "hidden_outranked")
DEDUP_KEYS = ("kept_by_merge_lost_by_nms", "kept_by_nms_lost_by_merge", "hidden_kept_by_merge_lost_by_nms",
              "hidden_kept_by_nms_lost_by_merge")


def summarise(counts: Counter, merged: bool) -> dict:
    """Totals over the images and the rates the report shows."""
    similarity = Counter({k: v for k, v in counts.items() if k.startswith("sim_")})
    counts = Counter({k: v for k, v in counts.items() if not k.startswith("sim_")})
    t = {k: int(counts.get(k, 0)) for k in sorted({*COUNT_KEYS, *HIDDEN_KEYS, *counts})}
    rates = {
        "originals_recall": _ratio(t["found_by_originals"], t["instances"]),
        "final_recall": _ratio(t["found_final"], t["instances"]),
        "mined_per_image": _ratio(t["mined_descriptors"], t["images"]),
        "mined_new_tp_share": _ratio(t["mined_new_tp"], t["mined_detections"]),
        "mined_duplicate_share": _ratio(t["mined_duplicate"], t["mined_detections"]),
        "mined_background_share": _ratio(t["mined_background"], t["mined_detections"]),
        "recovered_share": _ratio(t["recovered_by_mined"], t["missed_by_originals"]),
        "recovered_final_share": _ratio(t["recovered_final"], t["missed_by_originals"]),
        "lost_by_dedup_share": _ratio(t["lost_by_dedup"], t["found_by_descriptors"]),
        "duplicates_left_per_image": _ratio(t["duplicates_left"], t["images"]),
        # the instances that own no grid cell, stage by stage
        "hidden_found_by_originals_share": _ratio(t["hidden_found_by_originals"], t["hidden"]),
        "hidden_mined_match_share": _ratio(t["hidden_mined_match"], t["hidden"]),
        "hidden_found_final_share": _ratio(t["hidden_found_final"], t["hidden"]),
        "hidden_outranked_share": _ratio(t["hidden_outranked"], t["hidden_rank_pairs"]),
    }
    if "hidden_key_response" in t:
        rates["hidden_key_response_share"] = _ratio(t["hidden_key_response"], t["hidden"])
    if merged:
        t.update({k: int(counts.get(k, 0)) for k in MERGE_KEYS})
        rates.update({
            "merge_recall": _ratio(t["same_instance_joined"], t["same_instance_pairs"]),
            "false_merge_rate": _ratio(t["different_instance_joined"], t["different_instance_pairs"]),
            "fused_share_of_found": _ratio(t["instances_fused"], t["found_by_descriptors"]),
        })
        t.update({k: int(counts.get(k, 0)) for k in DEDUP_KEYS})
        rates["merge_keeps_nms_loses_share"] = _ratio(t["kept_by_merge_lost_by_nms"], t["found_by_descriptors"])
        rates["nms_keeps_merge_loses_share"] = _ratio(t["kept_by_nms_lost_by_merge"], t["found_by_descriptors"])
        pairs, aucs = _similarity_aucs(similarity)
        t.update(pairs)
        rates.update(aucs)
    return {"counts": t, "rates": rates}


def _ground_truth(coco, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    info = coco.imgs[image_id]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    masks = np.stack([coco.annToMask(a) > 0 for a in anns]) if anns else \
        np.zeros((0, info["height"], info["width"]), dtype=bool)
    return (masks, np.array([a["category_id"] for a in anns], dtype=np.int64),
            np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _hidden_rows(level_targets, gt_crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ground-truth row of `_ground_truth` (crowd regions included): whether the instance owns
    no grid cell, and its centre cell per level (G, L, 2), -1 off-level. The data set's instances
    are the image's non-crowd annotations in the same order."""
    owners = level_targets.gt_index
    n = len(level_targets.centres)
    if n != int((~gt_crowd).sum()):
        raise RuntimeError(f"{n} instances in the targets, {int((~gt_crowd).sum())} in the annotations")
    owned = np.zeros(n, dtype=bool)
    owned[_numpy(owners[owners >= 0])] = True
    hidden = np.zeros(len(gt_crowd), dtype=bool)
    hidden[~gt_crowd] = ~owned
    centres = np.full((len(gt_crowd), level_targets.centres.shape[1] if n else 0, 2), -1, dtype=np.int64)
    if n:
        centres[~gt_crowd] = _numpy(level_targets.centres)
    return hidden, centres


@torch.inference_mode()
def run_switches(model, dataset, cfg: dict, switches: list[str], name: str,
                 progress: bool) -> tuple[dict[str, list[dict]], Counter]:
    """COCO results of `model` under each inference switch (one forward pass per batch), and the
    summed counts of the `as_trained` switch's trace."""
    loader = DataLoader(dataset, batch_size=cfg["evaluate"]["batch_size"], shuffle=False,
                        num_workers=cfg["data"]["num_workers"],
                        collate_fn=Collate(cfg["data"]["input"]["size_divisibility"]))
    device = next(model.parameters()).device
    settings = {switch: (*SWITCHES[switch], switch == "as_trained") for switch in switches}
    results, counts, done = {switch: [] for switch in switches}, Counter(), 0
    with ProgressLog(len(dataset), name, every_s=cfg["evaluate"]["progress_every_s"], unit="image",
                     bar=progress, leave=False) as meter:
        for images, targets in loader:
            outputs = model.predict_switches(images.to(device), targets, settings)
            for switch, per_image in outputs.items():
                for out, target in zip(per_image, targets):
                    results[switch] += evaluation.encode_instances(target["image_id"], out["masks"].cpu(),
                                                                   out["scores"].cpu(), out["category_ids"].cpu())
            # which instances own no grid cell, at the size the model saw them (the batch's)
            level_targets = model.perceive.targets(targets, tuple(images.shape[-2:]))
            for b, (out, target) in enumerate(zip(outputs["as_trained"], targets)):
                tr = out["trace"]
                d = tr["descriptors"]
                gt_masks, gt_classes, gt_crowd = _ground_truth(dataset.coco, target["image_id"])
                desc_masks, desc_classes = _numpy(tr["masks"]), _numpy(model.category_ids[d.labels])
                counts.update(count_image(gt_masks, gt_classes, gt_crowd, desc_masks, desc_classes,
                                          _numpy(d.mined), tr["groups"],
                                          _numpy(out["masks"]), _numpy(out["category_ids"]), _numpy(out["mined"])))
                hidden, centres = _hidden_rows(level_targets[b], gt_crowd)
                key = tr.get("key_map")
                response = None if key is None else key_response_at(
                    centres, *(_numpy(key[k]) for k in ("level", "cell_y", "cell_x")), _numpy(key["prob"].float()))
                counts.update(count_hidden(gt_masks, gt_classes, gt_crowd, hidden, response,
                                           model.cfg["excavate"]["key_threshold"], desc_masks, desc_classes,
                                           _numpy(d.mined), _numpy(d.scores.float()),
                                           _numpy(out["masks"]), _numpy(out["category_ids"])))
                if model.purify is not None and len(d):
                    similarity = _numpy(model.purify.similarity_logits(d.kernels).sigmoid().float())
                    counts.update(count_similarity(gt_masks, gt_classes, gt_crowd, desc_masks, desc_classes,
                                                   similarity))
                if "matrix_nms" in outputs and tr["groups"] is not None:
                    nms = outputs["matrix_nms"][b]
                    counts.update(count_dedup_difference(gt_masks, gt_classes, gt_crowd, hidden,
                                                         _numpy(out["masks"]), _numpy(out["category_ids"]),
                                                         _numpy(nms["masks"]), _numpy(nms["category_ids"])))
            done += len(targets)
            meter.update(done, len(targets))
    return results, counts


def switches_for(variant_cfg: dict) -> list[str]:
    """The inference switches that change something for a variant."""
    names = ["as_trained"]
    if variant_cfg["excavate"]:
        names.append("no_mining")
    if variant_cfg["dedup"] == "purify_merge":
        names.append("matrix_nms")
        if variant_cfg["excavate"]:
            names.append("neither")
    return names


def mechanisms_variant(cfg: dict, variant: str, seeds: list[int], device="cpu", progress: bool = True) -> dict:
    """Score every seed's model of `variant` (see the module); write metrics/<variant>/mechanisms.json."""
    path = output_path(cfg, "metrics", variant, "mechanisms.json")
    outputs = StagedOutputs([path], "`pep mechanisms`")
    dataset = build_dataset(cfg, "val")
    models = {seed: load_trained(cfg, variant, seed, device)[0] for seed in seeds}
    variant_cfg = cfg["variants"][variant]
    merged = variant_cfg["dedup"] == "purify_merge"
    per_seed = {}
    with outputs:
        for seed, model in models.items():
            record = {"ap": {}}
            results, counts = run_switches(model, dataset, cfg, switches_for(variant_cfg),
                                           f"mechanisms {variant} seed {seed}", progress)
            for switch, switch_results in results.items():
                stats = evaluation.stats_in_percent(evaluation.evaluate(dataset.coco, switch_results, "segm")["stats"])
                record["ap"][switch] = {k: stats[k] for k in ("AP", "AP50", "AP75")}
            record.update(summarise(counts, merged))
            log.info("%s seed %d: originals find %d of %d instances, detections %d; AP %s", variant, seed,
                     record["counts"]["found_by_originals"], record["counts"]["instances"],
                     record["counts"]["found_final"],
                     ", ".join(f"{k} {v['AP']:.1f}" for k, v in record["ap"].items()))
            per_seed[str(seed)] = record
        data = {split: hidden_instances(cfg, split, next(iter(models.values()))) for split in ("train", "val")}
        outputs.write_json(path, {"variant": variant, "split": "val", "seeds": list(seeds), "match_iou": MATCH_IOU,
                                  "mean": mean_over_seeds(per_seed), "per_seed": per_seed, "data": data})
        outputs.publish()
    return per_seed


def mean_over_seeds(per_seed: dict) -> dict:
    """Mean and (several seeds) standard deviation over seeds of every rate and AP."""
    def spread(values: list[float]) -> dict:
        out = {"mean": round(statistics.mean(values), 4)}
        if len(values) > 1:
            out["std"] = round(statistics.stdev(values), 4)
        return out

    records = list(per_seed.values())
    rates = {k: spread([r["rates"][k] for r in records if r["rates"][k] is not None])
             for k in records[0]["rates"] if any(r["rates"][k] is not None for r in records)}
    ap = {switch: spread([r["ap"][switch]["AP"] for r in records]) for switch in records[0]["ap"]}
    return {"rates": rates, "ap": ap}


def mechanisms_command(cfg: dict, variant: str, seeds: list[int], progress: bool = True) -> int:
    """`pep mechanisms`: the report for every seed, one line each."""
    from pep.distributed import choose_device

    per_seed = mechanisms_variant(cfg, variant, seeds, device=choose_device(cfg["train"]["device"]), progress=progress)
    for seed, record in per_seed.items():
        rates = record["rates"]
        print(f"{variant} seed {seed}: originals find {100 * rates['originals_recall']:.1f}% of the "
              f"instances, detections {100 * rates['final_recall']:.1f}%; AP "
              + ", ".join(f"{k} {v['AP']:.1f}" for k, v in record["ap"].items()))
    return 0
