"""Training and evaluation command-line scripts (``python training/train.py``, or
``python -m training.train``); their building blocks live in :mod:`dfanet_core.train`."""
