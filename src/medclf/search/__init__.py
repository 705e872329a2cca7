"""Hyperparameter search on Optuna: search spaces, pruning, resumable and distributed studies."""
