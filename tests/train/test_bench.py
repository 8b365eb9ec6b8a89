import subprocess
import sys

import pytest

from train import bench

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
