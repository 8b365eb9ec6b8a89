import sys
import subprocess

from train import bench


def test_bench_times_both_paths(tmp_path):
    summary = bench.main(["--batch-size", "2", "--steps", "1", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "b.json")])
    assert set(summary["images_per_s"]) == {"kernels", "reference"}
    assert all(v > 0 for v in summary["images_per_s"].values())
    assert (tmp_path / "b.json").is_file()


def test_hvision_ext_does_not_import_the_models():
    code = "import sys, hvision_ext, hvision_ext.bench; print(any(m.split('.')[0] in ('python_models', 'train') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
