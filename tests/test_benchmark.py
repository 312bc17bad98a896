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
    assert load_script().main(["--widths", "demo", "--iters", "1", "--warmup", "0", "--batch", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON object and nothing else
    for name in (*VARIANTS, "maskrcnn", "backbone"):
        for key in (f"{name}_train_img_s", f"{name}_infer_img_s"):
            assert positive(report[key]), key
    for name in VARIANTS:
        assert positive(report["variants"][name]["params"]) and positive(report["variants"][name]["flops_per_image"])
    assert report["variants"]["pep"]["train_img_s"] == report["pep_train_img_s"]
    assert positive(report["pep_params"]) and positive(report["pep_flops_per_image"])
    assert positive(report["maskrcnn"]["flops_per_image"]) and positive(report["backbone"]["flops_per_image"])
    assert set(report["ratios"]) == {t["ratio"] for t in report["targets"]} and len(report["targets"]) == 3
    assert all(positive(v) for v in report["ratios"].values())
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
    pep, maskrcnn = matched["results"]
    assert (pep["model"], maskrcnn["model"]) == ("pep", "maskrcnn") and pep["depth"] == maskrcnn["depth"] == 50
    assert pep["backbone_params"] == maskrcnn["backbone_params"] > 20e6  # one ResNet-50-FPN
    for result in (pep, maskrcnn):
        assert positive(result["train_img_s"]) and positive(result["infer_img_s"]), result


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
