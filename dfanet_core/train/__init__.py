"""Training building blocks used by ``training/train.py``: the schedule as data, losses, the
weight EMA, time budgets, run-state files, logs, recipes and data-parallel helpers.

The network (and its training-only deep-supervision heads) lives in :mod:`dfanet_core.models`;
the decoded training set and its batched augmentation in :mod:`dfanet_core.data`.
"""
