"""The mechanism report's counts against a case whose answers are known by construction."""

import copy

import numpy as np
import pytest

from pep.engine.mechanisms import (count_dedup_difference, count_hidden, count_image, count_similarity,
                                    key_response_at, summarise)

H = W = 24


def box(top, left, bottom, right):
    m = np.zeros((H, W), dtype=bool)
    m[top:bottom, left:right] = True
    return m


# Ground truth: A and B touch and share class 1; C (class 2) is the instance perceiving misses;
# D is an iscrowd region of class 2.
A, B, C, D = box(0, 0, 6, 6), box(0, 6, 6, 12), box(12, 12, 18, 18), box(0, 16, 6, 24)
GT = dict(gt_masks=np.stack([A, B, C, D]), gt_classes=np.array([1, 1, 2, 2]),
          gt_crowd=np.array([False, False, False, True]))

# Descriptors before de-duplication: two on A (IoU 25/36 with A), one on B, a mined one on the
# unfound C, an original on background.
DESCRIPTORS = dict(
    desc_masks=np.stack([A, box(0, 0, 5, 5), B, C, box(18, 0, 24, 6)]),
    desc_classes=np.array([1, 1, 1, 2, 1]),
    desc_mined=np.array([False, False, False, True, False]),
)
# The merge joins both A descriptors (right) and B's into A's group (a false merge).
GROUPS = [[0, 1, 2], [3], [4]]
# Detections, best first: A, C from the mined descriptor, a mined duplicate of A, the background
# one, one inside the crowd region.
DETECTIONS = dict(
    det_masks=np.stack([A, C, box(0, 0, 5, 6), box(18, 0, 24, 6), box(1, 17, 5, 23)]),
    det_classes=np.array([1, 2, 1, 1, 2]),
    det_mined=np.array([False, True, True, False, False]),
)


def test_counts_of_a_known_case():
    c = count_image(**GT, **DESCRIPTORS, groups=GROUPS, **DETECTIONS)
    expected = {
        "images": 1, "instances": 3, "descriptors": 5, "mined_descriptors": 1, "detections": 5,
        "found_by_originals": 2, "found_by_descriptors": 3, "found_final": 2,
        "missed_by_originals": 1, "recovered_by_mined": 1, "recovered_final": 1,
        "lost_by_dedup": 1,  # B: its descriptor was merged into A's group
        "mined_detections": 2, "mined_new_tp": 1, "mined_duplicate": 1,
        "duplicates_left": 1, "background_detections": 1,
        "same_instance_pairs": 1, "same_instance_joined": 1,
        "different_instance_pairs": 2, "different_instance_joined": 2, "instances_fused": 1,
    }
    assert {k: c[k] for k in expected} == expected
    assert c["mined_background"] == 0 and c["mined_tp_known"] == 0  # the crowd detection is no background


def test_rates_and_no_purify_fields_without_a_merge():
    c = count_image(**GT, **DESCRIPTORS, groups=GROUPS, **DETECTIONS)
    rates = summarise(c, merged=True)["rates"]
    assert rates["originals_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert rates["recovered_share"] == 1.0
    assert rates["merge_recall"] == 1.0 and rates["false_merge_rate"] == 1.0
    assert rates["fused_share_of_found"] == pytest.approx(1 / 3, abs=1e-4)
    assert rates["mined_new_tp_share"] == 0.5 and rates["mined_duplicate_share"] == 0.5

    plain = count_image(**GT, **DESCRIPTORS, groups=None, **DETECTIONS)
    assert "same_instance_pairs" not in plain
    assert "merge_recall" not in summarise(plain, merged=False)["rates"]


def test_separated_touching_instances_are_not_a_false_merge():
    groups = [[0, 1], [2], [3], [4]]
    detections = dict(det_masks=np.stack([A, B, C]), det_classes=np.array([1, 1, 2]),
                      det_mined=np.array([False, False, True]))
    c = count_image(**GT, **DESCRIPTORS, groups=groups, **detections)
    assert c["different_instance_joined"] == 0 and c["instances_fused"] == 0
    assert c["found_final"] == 3 and c["lost_by_dedup"] == 0 and c["duplicates_left"] == 0


def test_empty_image():
    empty = np.zeros((0, H, W), dtype=bool)
    none = np.zeros(0, dtype=np.int64)
    c = count_image(empty, none, none.astype(bool), empty, none, none.astype(bool), [], empty, none,
                    none.astype(bool))
    assert c["instances"] == 0 and c["found_final"] == 0
    assert summarise(c, merged=True)["rates"]["merge_recall"] is None


def test_sweep_takes_inference_settings_only_and_checks_each_combination():
    from pep.config import PROJECT_ROOT, load_params
    from pep.engine.sweep import combinations, parse_options
    from pep.errors import PepError

    options = parse_options(["model.purify.then_matrix_nms=false,true", "model.purify.join_mask_iou=0,0.5",
                             "variants.pep.dedup=matrix_nms"], "pep")
    assert options == {"model.purify.then_matrix_nms": [False, True], "model.purify.join_mask_iou": [0, 0.5],
                       "variants.pep.dedup": ["matrix_nms"]}
    cfg = load_params(PROJECT_ROOT / "params.yaml")
    before = copy.deepcopy(cfg)
    combos = combinations(cfg, options)
    assert len(combos) == 4 and combos[3][1]["model"]["purify"]["join_mask_iou"] == 0.5
    assert [c[1]["model"]["purify"]["then_matrix_nms"] for c in combos] == [False, False, True, True]
    assert cfg == before  # the caller's settings are untouched
    with pytest.raises(PepError, match="train.lr: not read at inference"):
        parse_options(["train.lr=0.1"], "pep")
    with pytest.raises(PepError, match="expected KEY=VALUE"):
        parse_options(["model.purify.join_mask_iou"], "pep")
    with pytest.raises(PepError, match="then_matrix_nms"):
        combinations(cfg, parse_options(["model.purify.then_matrix_nms=maybe"], "pep"))
    with pytest.raises(PepError, match="no key 'typo'"):
        combinations(cfg, parse_options(["model.inference.typo=1"], "pep"))


# --- the stage-by-stage figures (pep/engine/mechanisms.py: hidden, similarity, dedup) ---

def test_key_response_reads_each_instance_centre_in_every_window_that_holds_it():
    # two originals on level 0 at cells (5, 5) and (5, 9), one on level 1 at (2, 2); windows of radius 1
    level, cell_y, cell_x = np.array([0, 0, 1]), np.array([5, 5, 2]), np.array([5, 9, 2])
    prob = np.zeros((3, 3, 3))
    prob[0, 1, 2] = 0.7   # window 0, cell (5, 6)
    prob[1, 1, 0] = 0.4   # window 1, cell (5, 8)
    prob[2, 2, 2] = 0.9   # window 2, cell (3, 3) on level 1
    centres = np.array([
        [[5, 6], [-1, -1]],    # in window 0 (0.7) only
        [[5, 8], [3, 3]],      # window 1 (0.4) on level 0, window 2 (0.9) on level 1: the higher
        [[5, 5], [-1, -1]],    # window 0's own cell: reads 0, as mining never takes it
        [[0, 0], [-1, -1]],    # in no window
        [[-1, -1], [-1, -1]],  # on no level
    ])
    assert key_response_at(centres, level, cell_y, cell_x, prob).tolist() == [0.7, 0.9, 0.0, 0.0, 0.0]


# A hidden instance E (class 1, behind A's neighbour); mined descriptors: one matching E (score
# 0.5), two duplicates of A (0.9, 0.2); an original on A (0.8).
E = box(12, 0, 18, 6)
HIDDEN_GT = dict(gt_masks=np.stack([A, E, D]), gt_classes=np.array([1, 1, 2]),
                 gt_crowd=np.array([False, False, True]))


def test_hidden_instances_stage_by_stage():
    args = dict(**HIDDEN_GT, hidden=np.array([False, True, True]),  # a crowd region never counts
                desc_masks=np.stack([A, E, A, box(0, 0, 6, 5)]), desc_classes=np.array([1, 1, 1, 1]),
                desc_mined=np.array([False, True, True, True]), desc_scores=np.array([0.8, 0.5, 0.9, 0.2]),
                det_masks=np.stack([A, E]), det_classes=np.array([1, 1]), key_threshold=0.3)
    c = count_hidden(key_response=np.array([0.0, 0.6, 0.9]), **args)
    assert dict(c) == {"hidden": 1, "hidden_key_response": 1, "hidden_found_by_originals": 0,
                       "hidden_mined_match": 1, "hidden_found_final": 1,
                       "hidden_rank_pairs": 2, "hidden_outranked": 1}  # 0.9 outranks 0.5, 0.2 does not
    weak = count_hidden(key_response=np.array([0.0, 0.2, 0.0]), **{**args, "det_masks": np.stack([A])[:, :, :],
                                                                     "det_classes": np.array([1])})
    assert weak["hidden_key_response"] == 0 and weak["hidden_found_final"] == 0
    assert "hidden_key_response" not in count_hidden(key_response=None, **args)  # no excavating
    rates = summarise(c + count_image(**HIDDEN_GT, **dict(
        desc_masks=args["desc_masks"], desc_classes=args["desc_classes"], desc_mined=args["desc_mined"],
        groups=None, det_masks=args["det_masks"], det_classes=args["det_classes"],
        det_mined=np.array([False, True]))), merged=False)["rates"]
    assert rates["hidden_key_response_share"] == 1.0 and rates["hidden_outranked_share"] == 0.5


def test_similarity_auc_split_by_mask_overlap():
    """Four descriptors: two on A, one on B (touching A, apart from it) and one on F, a
    same-class instance overlapping A's second descriptor's mask by IoU >= 0.5."""
    F_ = box(0, 0, 6, 4)  # IoU with A = 24/36
    gt = dict(gt_masks=np.stack([A, B, F_]), gt_classes=np.array([1, 1, 1]), gt_crowd=np.zeros(3, bool))
    # A's masks: A itself and box(0,0,6,5) (IoU 30/36 with A, 24/30 with F); F's: F
    desc_masks = np.stack([A, box(0, 0, 6, 5), B, F_])
    # descriptor 1 matches A (30/36 beats 24/30): pairs: (0,1) same A overlap; (0,2) diff apart;
    # (0,3) diff overlap (24/36); (1,2) diff apart; (1,3) diff overlap (24/30); (2,3) diff apart
    similarity = np.array([[1, 0.8, 0.1, 0.9],
                           [0.8, 1, 0.3, 0.6],
                           [0.1, 0.3, 1, 0.2],
                           [0.9, 0.6, 0.2, 1]])
    c = count_similarity(**gt, desc_masks=desc_masks, desc_classes=np.ones(4, int), similarity=similarity)
    assert sum(c.values()) == 6
    assert c["sim_same_overlap_80"] == 1 and c["sim_diff_overlap_90"] == 1 and c["sim_diff_overlap_60"] == 1
    t = summarise(c + count_image(**gt, desc_masks=desc_masks, desc_classes=np.ones(4, int),
                                  desc_mined=np.zeros(4, bool), groups=[[0], [1], [2], [3]],
                                  det_masks=desc_masks, det_classes=np.ones(4, int), det_mined=np.zeros(4, bool)),
                  merged=True)
    # overlapping: the same pair (0.8) beats 0.6, loses to 0.9: AUC 0.5; apart: no same pair
    assert t["rates"]["similarity_auc_overlapping"] == 0.5 and t["rates"]["similarity_auc_apart"] is None
    assert t["rates"]["similarity_auc"] == pytest.approx(4 / 5)  # 0.8 beats 0.6, 0.1, 0.3, 0.2
    assert t["counts"]["diff_instance_overlap_pairs"] == 2 and t["counts"]["diff_instance_apart_pairs"] == 3


def test_what_one_deduplication_keeps_and_the_other_loses():
    gt = dict(gt_masks=np.stack([A, B, C, D]), gt_classes=np.array([1, 1, 2, 2]),
              gt_crowd=np.array([False, False, False, True]))
    c = count_dedup_difference(**gt, hidden=np.array([False, True, False, False]),
                               merge_masks=np.stack([A, B]), merge_classes=np.array([1, 1]),
                               nms_masks=np.stack([A, C, D]), nms_classes=np.array([1, 2, 2]))
    assert dict(c) == {"kept_by_merge_lost_by_nms": 1, "kept_by_nms_lost_by_merge": 1,  # B; C (D is a crowd)
                       "hidden_kept_by_merge_lost_by_nms": 1, "hidden_kept_by_nms_lost_by_merge": 0}
