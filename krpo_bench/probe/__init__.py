"""The gradient-quality probe: how well each advantage estimator's one-batch policy gradient points
at the true policy gradient, measured directly at fixed weights, with common random numbers.

``krpo-bench probe FILE`` (or ``krpo-bench run`` of a ``kind: probe`` file) runs a
:class:`~krpo_bench.probe.spec.ProbeSpec` through :func:`~krpo_bench.probe.run.run_probe`.
"""
