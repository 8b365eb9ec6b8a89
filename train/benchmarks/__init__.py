"""The measurements behind the benchmark jobs (``python -m train.bench``, ``train.infer_bench``):
a training or inference step timed over a grid of settings, and the video design's table at its
own scale."""
