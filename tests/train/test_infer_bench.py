import json

import pytest

from train import infer_bench

TINY = "{num_frames: 4, img_size: 32, embed_dim: 24, num_heads: 2, depth: 2}"
FAST = ["--batch-size", "2", "--budget-s", "0", "--min-steps", "1", "--threads", "1"]


def test_a_tiny_grid_gives_sane_rows(tmp_path):
    out = tmp_path / "infer.json"
    grid = "{attention: [full, mamba], merge_ratio: [0.0, 0.5]}"
    summary = infer_bench.main([*FAST, "--model-args", TINY, "--grid", grid, "--json", str(out)])
    rows = summary["results"]
    assert [row["settings"] for row in rows] == [
        {"attention": attention, "merge_ratio": ratio}
        for attention in ("full", "mamba")
        for ratio in (0.0, 0.5)
    ]
    for row in rows:
        assert all(row[mode]["clips_per_s"] > 0 for mode in infer_bench.LORA_MODES)
        assert all(row[mode]["cpu_ms"] > 0 for mode in infer_bench.LORA_MODES)
        assert row["unmerged"]["params"] == row["merged"]["params"] > row["off"]["params"]
        assert row["lora_max_abs_change"] > 1e-3
        assert row["merge_max_abs_diff"] < 1e-4
    assert json.loads(out.read_text())["results"] == rows


def test_a_model_without_clips_is_refused():
    with pytest.raises(ValueError, match="expected a video model .* got VisionMamba"):
        infer_bench.main([*FAST, "--model", "vim_tiny_cifar", "--grid", "{depth: [1]}"])
