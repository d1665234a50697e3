"""The gradient-quality probe: how well each advantage estimator's one-batch policy gradient points
at the true policy gradient, measured directly at fixed weights, with common random numbers.

``krpo-bench probe FILE`` runs a :class:`~krpo_bench.probe.spec.ProbeSpec` here, through
:func:`~krpo_bench.probe.run.run_probe`. Submitted (``krpo-bench submit`` or ``run``, ``POST
/api/v1/studies``) it is a study of one job, which a worker runs like a trial
(``krpo_bench.service.probe_job``); ``krpo-bench report STUDY`` writes its report.
"""
