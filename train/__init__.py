"""Training and evaluation. Each job is a thin command line at this level (``python -m
train.classify``, ``train.mae``, ``train.memory``, ``train.continual``, ``train.video``,
``train.evaluate``, ``train.ask``, ``train.bench``, ``train.infer_bench``, ``train.bench_data``)
whose ``run(config)`` returns a dict; what it trains is in ``tasks`` (and ``strategies`` for
class-incremental learning), which stand on ``engine`` and ``data``, which stand on the
engine's settings, checkpoints and process group and on ``metrics``. No job imports another."""
