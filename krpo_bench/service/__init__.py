"""Service layer: studies, the durable job queue, workers and the scheduler.

The database layer is ``krpo_bench.service.db`` (schema, engines, migrations) and the job protocol
is ``krpo_bench.service.queue``; the names most callers need are re-exported here.
"""

from krpo_bench.service.db import JobStatus, make_engine, upgrade
from krpo_bench.service.queue import ClaimedJob, Heartbeat, JobInfo, JobQueue, NewJob

__all__ = [
    "ClaimedJob",
    "Heartbeat",
    "JobInfo",
    "JobQueue",
    "JobStatus",
    "NewJob",
    "make_engine",
    "upgrade",
]
