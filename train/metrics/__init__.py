"""Metrics and their records: the per-epoch logger and curves, figures (the one place that
draws), classification, temporal detection, captioning text and continual-learning scores.
Pure functions of predictions and targets: nothing here runs a model."""
