"""The demo runs end to end on synthetic data, deterministically, and re-runs in place."""

import json

from pathodet.demo import run_demo


def test_demo_runs_twice_into_the_same_folder_with_the_same_result(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out, seed=3, positive=2, negative=4, size=600, echo=lambda _: None)
    assert (out / "report.md").is_file() and (out / "overlay-ap.png").is_file()
    assert first["summary"]["positive_images"] == 2
    assert first["summary"]["negative_images"] == 4
    assert first["drop"]["kept_boxes"] + first["drop"]["removed_boxes"] == first["summary"]["boxes"]
    # every image lands in exactly one fold
    assert sum(f["AP"] + f["NP"] for f in first["folds"]) == 6
    second = run_demo(out, seed=3, positive=2, negative=4, size=600, echo=lambda _: None)
    assert second == first
    assert json.loads((out / "demo.json").read_text()) == first
