"""Training one trial: the trainer, its callbacks, evaluation, and a trial over several processes.

Below the service (which runs trials in child processes) and above the library it trains with
(models, tasks, estimators, spec, tracking, settings); tests/test_layers.py keeps that order.
"""
