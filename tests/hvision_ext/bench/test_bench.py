"""The bench CLI: case registry, timing, the table and the JSON record, on a tiny case."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from hvision_ext.bench import isa, registry, timing
from hvision_ext.bench.__main__ import main
from hvision_ext.bench.registry import BenchCase


@pytest.fixture(scope="module", autouse=True)
def sleep_case():
    """A case of two implementations that sleep for different times."""

    def build(device, dtype):
        return BenchCase(
            shape="two sleeps",
            impls={"hvision": lambda: time.sleep(0.002), "reference": lambda: time.sleep(0.004)},
            mode="fwd",
        )

    registry.bench_case(op="test_sleep", name="sleeps", devices=("cpu",))(build)
    yield
    registry._CASES.pop(("test_sleep", "sleeps"))


def test_run_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert (
        main(["--op", "test_sleep", "--device", "cpu", "--budget", "0.05", "--json", str(path)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "test_sleep" in printed and "reference" in printed
    record = json.loads(path.read_text())
    by_impl = {r["impl"]: r for r in record["results"]}
    hvision, reference = by_impl["hvision"], by_impl["reference"]
    assert hvision["median_s"] >= 0.002 and reference["median_s"] >= 0.004
    assert reference["hvision_speedup"] == pytest.approx(
        reference["median_s"] / hvision["median_s"]
    )
    assert record["torch_version"] == torch.__version__


def test_unknown_op_is_an_error(capsys):
    assert main(["--op", "no_such_op", "--device", "cpu"]) == 2
    assert "unknown bench op" in capsys.readouterr().err


def test_first_impl_must_be_hvision():
    with pytest.raises(ValueError, match="first implementation must be 'hvision'"):
        BenchCase(shape="", impls={"reference": lambda: None}, mode="fwd")


def test_selective_scan_cases_are_registered(capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("selective_scan/vim-cpu ", "selective_scan/vim-cpu-fwd", "selective_scan/vim-gpu"):
        assert name in listed


@pytest.mark.skipif(
    not timing.cpu_peak_supported(), reason="needs Linux's /proc/self/clear_refs and glibc"
)
def test_cpu_peak_memory_counts_what_a_call_allocates():
    def two_live_buffers():
        # 64 MiB each: above what glibc ever serves from its heap, so each is a fresh mapping.
        first = torch.ones(16 * 2**20)
        second = first * 2  # allocated while `first` is alive
        return second.sum()

    result = timing.time_impl(two_live_buffers, torch.device("cpu"), budget_s=0.01)
    assert 124 * 2**20 <= result.peak_bytes <= 136 * 2**20


def test_time_impls_interleaves_the_timed_calls_and_reports_failures():
    calls = []

    def recorder(name):
        return lambda: calls.append(name)

    def fails_on_third_call():
        calls.append("failing")
        if calls.count("failing") == 3:
            raise RuntimeError("out of memory")

    impls = {"a": recorder("a"), "b": recorder("b"), "failing": fails_on_third_call}
    impls["once"] = recorder("once")
    results = timing.time_impls(
        impls, torch.device("cpu"), budget_s=0.0, min_runs=7, max_runs=10, slow={"once"}
    )
    assert isinstance(results["failing"], RuntimeError)
    assert len(results["once"].samples_s) == 1 and calls.count("once") == 1  # no warm-up
    assert len(results["a"].samples_s) == len(results["b"].samples_s) == 7
    rounds = [name for name in calls if name in ("a", "b")][4:]  # after warm-up and first call
    assert rounds[: 2 * timing._ROUNDS] == ["a", "b"] * timing._ROUNDS


def test_cpu_tensor_peak_counts_the_tensors_alive_at_once():
    def two_live_buffers():
        first = torch.ones(2**20)  # 4 MiB
        second = first * 2  # allocated while `first` is alive
        del first
        third = second + 1  # `first` is gone: still two alive
        return third

    peak = timing.cpu_tensor_peak_bytes(two_live_buffers)
    assert 8 * 2**20 <= peak < 8 * 2**20 + 1024  # and the few bytes of the scalar operands
    assert timing.cpu_tensor_peak_bytes(two_live_buffers) == peak


def test_sparse_attention_cases_are_registered(capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "local-global ",
        "local-global-fwd",
        "strided ",
        "strided-fwd",
        "local-global-L16384",
        "local-global-gpu",
    ):
        assert f"sparse_attention/{name}" in listed


def test_sparse_attention_case_runs_every_impl():
    """A small build of the case runs hvision and the masked-SDPA anchor to the same output."""
    from hvision_ext.bench import sparse_attention as cases

    sizes = dict(batch=1, heads=2, length=300, head_dim=16)
    case = cases.attention_case(
        torch.device("cpu"), torch.float32, "fwd", sizes, cases.LOCAL_GLOBAL, flex=False
    )
    assert list(case.impls) == ["hvision", "sdpa-masked"]
    torch.testing.assert_close(
        case.impls["hvision"](), case.impls["sdpa-masked"](), rtol=1e-4, atol=1e-5
    )


def test_isa_environment_holds_every_library_to_it():
    environment = os.environ | isa.environment_for("avx2")
    code = "import json; from hvision_ext.bench import isa; print(json.dumps(isa.describe()))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described["hvision_cpu_isa"] == "avx2" and described["hvision_cpu_gemm"] == "blas"
    assert described["aten_cpu_capability"] == "AVX2"
    assert described["library_limits"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_isa_option_restarts_the_bench_in_that_environment(monkeypatch):
    started = []
    monkeypatch.setattr(os, "execve", lambda *args: started.append(args))
    for name in isa.LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    isa.restart_under("baseline", ["--isa", "baseline", "--op", "motion_saliency"])
    ((executable, command, environment),) = started
    assert command[1:] == [
        "-m",
        "hvision_ext.bench",
        "--isa",
        "baseline",
        "--op",
        "motion_saliency",
    ]
    assert environment["HVISION_CPU_ISA"] == "baseline"
    assert environment["ATEN_CPU_CAPABILITY"] == "default"


def test_unknown_isa_is_refused():
    with pytest.raises(ValueError, match="--isa: expected one of avx512, avx2, baseline"):
        isa.environment_for("sse")
