"""Celery tasks: thin wrappers that take ids and hand over to the job runner."""

from __future__ import annotations

import logging
import os
import threading

from kinemesh.services.common.errors import KinemeshError
from kinemesh.services.common.queue import PROCESS_JOB_TASK
from kinemesh.services.worker.celery_app import app
from kinemesh.services.worker.runner import get_runner

log = logging.getLogger("kinemesh.worker")

# The runner checks its deadline between frame batches; this catches a job stuck inside native
# code (the solo pool cannot enforce Celery's time limits). The process exits, the unacked job is
# redelivered, and the attempt cap fails it as `worker_lost` if it keeps doing this.
HANG_GRACE_S = 120


def _hung(job_id: str) -> None:
    log.critical("job %s is stuck past its time limit; exiting so the worker is replaced", job_id)
    os._exit(70)


@app.task(name=PROCESS_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def process_job_task(self, job_id: str) -> None:
    runner = get_runner()
    watchdog = threading.Timer(runner.settings.job_time_limit_s + HANG_GRACE_S, _hung, args=(job_id,))
    watchdog.daemon = True
    watchdog.start()
    try:
        runner.process(job_id, final_attempt=self.request.retries >= runner.settings.max_retries)
    except KinemeshError as exc:  # the runner stored every failure but transient ones
        if not exc.retryable:
            raise
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries),
                         max_retries=runner.settings.max_retries) from exc
    finally:
        watchdog.cancel()
