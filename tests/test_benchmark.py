"""benchmarks/throughput.py runs end to end and reports what the lead reads (not its speed)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

from pep.config import PROJECT_ROOT, VARIANTS

SCRIPT = PROJECT_ROOT / "benchmarks" / "throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_json_report_has_every_number(capsys):
    assert load_script().main(["--widths", "demo", "--iters", "2", "--warmup", "0", "--batch", "2",
                               "--breakdown-iters", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON object and nothing else
    for name in (*VARIANTS, "maskrcnn", "backbone"):
        for key in (f"{name}_train_img_s", f"{name}_infer_img_s"):
            assert positive(report[key]), key
    for name in VARIANTS:
        assert positive(report["variants"][name]["params"]) and positive(report["variants"][name]["flops_per_image"])
    assert report["variants"]["pep"]["train_img_s"] == report["pep_train_img_s"]
    assert positive(report["pep_params"]) and positive(report["pep_flops_per_image"])
    assert positive(report["maskrcnn"]["flops_per_image"]) and positive(report["backbone"]["flops_per_image"])
    assert set(report["ratios"]) == {t["ratio"] for t in report["targets"]} and len(report["targets"]) == 5
    assert {"pep_train_vs_baseline", "pep_infer_time_vs_baseline"} <= set(report["ratios"])
    assert all(positive(v) for v in report["ratios"].values())
    for name, spread in report["ratio_spreads"].items():
        assert spread["q1"] <= spread["median"] == report["ratios"][name] <= spread["q3"]
        assert spread["rounds"] == 2 and 1 <= spread["settled_after"] <= 2
    # every variant's time per box of Fig. 2: the rows add up to the profiled wall time
    assert set(report["breakdowns"]) == set(VARIANTS)
    for name, modes in report["breakdowns"].items():
        for mode in ("train", "infer"):
            b = modes[mode]
            assert positive(b["forward"]["backbone"]) and positive(b["forward"]["perceiving"]), (name, mode)
            assert math.isclose(sum(b["forward"].values()) + sum(b["backward"].values()), b["wall_ms_per_image"],
                                rel_tol=1e-6), (name, mode)
        assert positive(modes["train"]["backward"]["backbone"])
        assert ("excavating" in modes["train"]["forward"]) == (name in ("excavate", "pep"))
        assert ("purifying" in modes["train"]["forward"]) == (name in ("purify", "pep"))
    assert all(isinstance(t["pass"], bool) for t in report["targets"])
    assert report["batch_size"] == 2 and report["device"] == "cpu" and positive(report["threads"])
    assert len(report["input_size"]) == 2 and all(s % 32 == 0 for s in report["input_size"])
    assert report["torch"]


def test_matched_comparison_sets_pep_against_mask_rcnn_at_the_same_widths(capsys):
    """The coco profile's PEP and Mask R-CNN on one backbone: the same ResNet-FPN (parameter
    for parameter), 256 channels, at a small size so that a CPU runs it in seconds."""
    args = ["--widths", "coco", "--coco-depths", "50", "--coco-size", "128", "--coco-iters", "1",
            "--coco-warmup", "0", "--json"]
    assert load_script().main(args) == 0
    matched = json.loads(capsys.readouterr().out)["matched_coco"]
    assert matched["widths"]["fpn_channels"] == 256 and matched["widths"]["head_channels"] == 256
    baseline, pep, maskrcnn = matched["results"]
    assert [r["model"] for r in matched["results"]] == ["baseline", "pep", "maskrcnn"]
    assert baseline["depth"] == pep["depth"] == maskrcnn["depth"] == 50
    assert baseline["backbone_params"] == pep["backbone_params"] == maskrcnn["backbone_params"] > 20e6  # one ResNet-50-FPN
    for result in (baseline, pep, maskrcnn):
        assert positive(result["train_img_s"]) and positive(result["infer_img_s"]), result
    assert all(positive(v) for v in matched["ratios_pep_vs_maskrcnn"]["R50"].values())
    assert set(matched["breakdowns"]) == {"baseline", "pep"}
    assert positive(matched["breakdowns"]["pep"]["train"]["backward"]["excavating"])


def test_validate_speed_reports_each_step(capsys):
    spec = importlib.util.spec_from_file_location("validate_speed", PROJECT_ROOT / "benchmarks" / "validate_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--copies", "2", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 100 and report["annotations"] > 0
    for key in ("json_parse_s", "check_s", "create_index_s", "load_coco_s"):
        assert positive(report[key]), key
    assert all(positive(v) for v in report["ratios"].values())


def test_breakdown_charges_forward_and_backward_to_their_scopes():
    """Two scopes by hand: a large matrix product in one, a small one in the other. Each gets its
    own forward time and the backward of its own ops; what lies outside both is `other`."""
    import torch

    from pep.model.scopes import scope

    load_script()  # puts throughput_lib on the path
    from throughput_lib.breakdown import profile_calls

    big = torch.randn(384, 384, requires_grad=True)
    small = torch.randn(8, 8, requires_grad=True)

    def step():
        with scope("backbone"):
            a = (big @ big @ big).sum()
        with scope("purifying"):
            b = (small @ small).sum()
        (a + b).backward()

    result = profile_calls(step, images=2, iters=3)
    assert result.forward["backbone"] > 5 * result.forward["purifying"] > 0
    assert result.backward["backbone"] > 5 * result.backward["purifying"] > 0
    assert set(result.backward) <= {"backbone", "purifying", "other"}
    total = sum(result.forward.values()) + sum(result.backward.values())
    assert math.isclose(total, result.wall_ms_per_image, rel_tol=1e-6)
    assert result.rows() == [r for r in ("backbone", "purifying", "other") if result.total(r) > 0]


def test_a_ratio_settles_when_its_running_median_stops_moving():
    load_script()  # puts throughput_lib on the path
    from throughput_lib.timing import Spread, ratio_spread

    spread = ratio_spread([2.0, 4.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert spread.median == 3.0 and spread.rounds == 5
    assert spread.settled_after == 2  # running medians 2, 3, 3, 3, 3: at the final 3 from round 2 on
    assert Spread.of([1.0, 2.0, 3.0, 4.0, 5.0]).q1 == 2.0 and Spread.of([1.0, 2.0, 3.0, 4.0, 5.0]).q3 == 4.0
