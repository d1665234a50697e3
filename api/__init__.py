"""The krpo-bench REST API: a thin FastAPI layer over :mod:`krpo_bench.service` (see ``krpo_bench.api.app``)."""
