"""The mechanism report's counts against a case whose answers are known by construction."""

import copy

import numpy as np
import pytest

from pep.engine.mechanisms import count_image, summarise

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
