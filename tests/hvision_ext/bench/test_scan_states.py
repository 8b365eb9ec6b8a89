"""The per-state-size kernel timing, on a tiny scan."""

import math

from hvision_ext.bench import scan_states


def test_times_every_state_size_per_channel_step():
    timings = scan_states.time_states([2, 8, 9], batch=1, dim=17, length=70, repeats=2)
    assert list(timings) == [2, 8, 9]
    for fwd, bwd in timings.values():
        assert 0 < fwd < math.inf and 0 < bwd < math.inf


def test_main_prints_one_line_per_state_size(capsys):
    scan_states.main(["--states", "4", "16", "--repeats", "1", "--dim", "3", "--length", "5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("selective_scan kernels")
    assert [line.split(":")[0] for line in lines[1:]] == ["N   4", "N  16"]
