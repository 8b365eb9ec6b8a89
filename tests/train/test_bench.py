import json
import subprocess
import sys

import pytest
import torch

from python_models.video import MIXERS
from python_models.video.mixers import TokenLayout, build_mixer
from train import bench
from train.benchmarks import video_table

FAST = ["--batch-size", "2", "--budget-s", "0", "--min-steps", "1", "--threads", "1"]


def test_bench_times_both_paths(tmp_path):
    summary = bench.main([*FAST, "--model-args", "{depth: 2}", "--json", str(tmp_path / "b.json")])
    (row,) = summary["results"]
    assert set(row) == {"settings", "params", "kernels", "reference"}
    assert all(row[impl]["images_per_s"] > 0 for impl in ("kernels", "reference"))
    assert all(row[impl]["tensor_peak_mib"] > 0 for impl in ("kernels", "reference"))
    assert (tmp_path / "b.json").is_file()


def test_bench_grid_covers_every_combination():
    grid = "{h_cycles: [1, 2], one_step_gradient: [true, false]}"
    model_args = "{hidden_dim: 16, num_heads: 2, h_layers: 1, l_layers: 1, segments: 2}"
    summary = bench.main(
        [
            *FAST,
            "--model",
            "hrm_vision_cifar10",
            "--model-args",
            model_args,
            "--grid",
            grid,
            "--impl",
            "kernels",
        ]
    )
    settings = [row["settings"] for row in summary["results"]]
    assert settings == [
        {"h_cycles": 1, "one_step_gradient": True},
        {"h_cycles": 1, "one_step_gradient": False},
        {"h_cycles": 2, "one_step_gradient": True},
        {"h_cycles": 2, "one_step_gradient": False},
    ]
    assert all(set(row) == {"settings", "params", "kernels"} for row in summary["results"])


def test_bench_rejects_a_grid_value_that_is_not_a_list():
    with pytest.raises(ValueError, match="expected a non-empty list of values for 'depth'"):
        bench.main([*FAST, "--grid", "{depth: 2}"])


def test_hvision_ext_does_not_import_the_models():
    code = (
        "import sys, hvision_ext, hvision_ext.bench; "
        "print(any(m.split('.')[0] in ('python_models', 'train') for m in sys.modules))"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


TINY_SEED_TABLE = [
    "--video",
    "--seed-table",
    "--threads",
    "1",
    "--repeats",
    "2",
    "--frames",
    "2",
    "--model-args",
    "{embed_dim: 32, num_heads: 2, img_size: 32}",
    "--depths",
    "1",
    "--tables",
    "mixer,model",
]


def test_seed_table_rows_and_ratios_come_from_the_measured_steps(tmp_path):
    summary = bench.main([*TINY_SEED_TABLE, "--json", str(tmp_path / "table.json")])
    rows = summary["rows"]
    mixers = {row["row"]: row for row in rows if row["table"] == "mixer"}
    models = {row["row"]: row for row in rows if row["table"] == "model"}
    assert list(mixers) == ["standard", *MIXERS]
    plain = [f"{kind}{merged}" for kind in mixers for merged in ("", " + merge 0.5")]
    combined = [f"{kind} + merge 0.5 + checkpointing" for kind in video_table.EFFICIENT]
    assert list(models) == plain + combined
    for table in (mixers, models):
        standard, sdpa = table["standard"], table["full"]
        for row in table.values():
            assert row["step_range_s"][0] <= row["step_s"] <= row["step_range_s"][1]
            assert len(row["samples_s"]) == 2 and row["tensor_peak_mib"] > 0
            assert row["speedup_vs_standard"] == standard["step_s"] / row["step_s"]
            assert row["speedup_vs_sdpa"] == sdpa["step_s"] / row["step_s"]
            assert row["memory_vs_sdpa"] == row["tensor_peak_mib"] / sdpa["tensor_peak_mib"]
    merged = models["mamba + merge 0.5"]
    assert merged["merge_speedup"] == models["mamba"]["step_s"] / merged["step_s"]
    floors = {floor["claim"]: floor for floor in summary["floors"]}
    assert (
        floors["mixer strided: speed-up over SDPA >= 3.0"]["figure"]
        == (mixers["strided"]["speedup_vs_sdpa"])
    )
    combined_floor = floors[f"model depth 1, {combined[0]}: memory share of standard <= 0.1"]
    assert combined_floor["met"] == (models[combined[0]]["memory_vs_standard"] <= 0.1)
    assert json.loads((tmp_path / "table.json").read_text())["floors"] == summary["floors"]


def test_standard_attention_matches_sdpa():
    torch.manual_seed(0)
    standard = video_table.StandardAttention(32, 2)
    sdpa = build_mixer("full", 32, 2)
    sdpa.load_state_dict(standard.state_dict())
    x, layout = torch.randn(2, 9, 32), TokenLayout(1, 2)
    torch.testing.assert_close(standard(x, layout), sdpa(x, layout))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--video", "--seed-table", "--types", "full,dense"], "--types: expected values of"),
        (["--seed-table"], "both --video and --seed-table"),
        (["--video", "--seed-table", "--depths", "0"], "must be >= 1"),
    ],
)
def test_seed_table_rejects_bad_options(flags, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(flags)
    assert message in capsys.readouterr().err
