"""``pathodet bench speed``: the pieces whose numbers the report is built from."""

import numpy as np
import pytest
import torch

from pathodet.bench.speed import image_inference, matmul_peak, speed_md, window_flops
from pathodet.demo.settings import demo_config
from pathodet.model import build_retinanet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_retinanet(demo_config(".", "dghm", 0, 1, []).model).eval()


def test_matmul_peak_is_the_better_of_both_libraries():
    r = matmul_peak(torch.float32, n=256, repeats=2)
    assert r["mm"] > 0 and r["conv1x1"] > 0
    assert r["peak"] == max(r["mm"], r["conv1x1"])


def test_window_flops_follow_the_window_area(model):
    # a fully convolutional detector: 4x the pixels, 4x the work (within the borders' slack)
    small, big = window_flops(model, 128), window_flops(model, 256)
    assert big / small == pytest.approx(4.0, rel=0.05)
    # the ResNet-18 trunk alone is 3.63 GFLOP at 224 px (torchvision's figure: 1.81 GMAC);
    # the whole detector at 224 px must cost more than that
    assert window_flops(model, 224) > 3.6e9


def test_image_inference_counts_the_windows_detect_image_reads(model):
    rgb = np.zeros((300, 420, 3), np.uint8)
    r = image_inference(model, rgb, tile=256, precision="fp32", repeats=1)
    # stride 256 - 128: rows at 0, 44 (last flush); columns at 0, 128, 164
    assert r["windows"] == 2 * 3
    assert 0.0 <= r["outside_forward"] < 1.0
    assert r["mpx_per_s"] == pytest.approx(300 * 420 / 1e6 / r["wall_s"])


def test_report_shows_ratios_and_the_froc_difference():
    r = {
        "threads": 2,
        "train_step": {
            "setting": {"batch": 8, "size": 600},
            "step_s": {"focal": 2.0, "dghm": 2.1},
            "step_ratio_to_focal": {"focal": 1.0, "dghm": 1.05},
        },
        "matmul_gflops": {p: {"mm": 1.0, "conv1x1": 2.0, "peak": 2.0} for p in ("fp32", "bf16")},
        "model": "m",
        "inference": [{"tile": 512, "precision": "bf16", "mpx_per_s": 1.5,
                       "outside_forward": 0.04, "achieved_gflops": 1.0, "share_of_peak": 0.5}],
        "froc": {"fp32": {"froc": 0.8731}, "bf16": {"froc": 0.8712}, "delta": -0.0019},
    }  # fmt: skip
    md = speed_md(r)
    assert "| dghm | 2.100 | 1.050 |" in md
    assert "| 512 | bf16 | 1.50 | 4.0% | 1 | 50% |" in md
    assert "difference -0.0019" in md


def test_the_two_process_section_replaces_its_old_self_and_keeps_the_rest():
    from pathodet.bench.share import with_section

    old = "# Speed\n\nintro\n\n## Two processes on one machine\n\nold table\n\n## Later\n\nkept\n"
    new = "## Two processes on one machine\n\nnew table\n"
    got = with_section(old, new)
    assert "old table" not in got and got.count("## Two processes on one machine") == 1
    assert got.startswith("# Speed\n\nintro\n") and "## Later\n\nkept" in got
    assert got.endswith("new table\n")
    assert with_section("# Speed\n", new) == "# Speed\n\n" + new  # appended when absent
