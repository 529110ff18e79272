"""Celery tasks: thin wrappers that take ids and hand over to the job runner."""

from __future__ import annotations

from kinemesh.services.common.errors import KinemeshError
from kinemesh.services.common.queue import PROCESS_JOB_TASK
from kinemesh.services.worker.celery_app import app
from kinemesh.services.worker.runner import get_runner


@app.task(name=PROCESS_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def process_job_task(self, job_id: str) -> None:
    runner = get_runner()
    try:
        runner.process(job_id, final_attempt=self.request.retries >= runner.settings.max_retries)
    except KinemeshError as exc:  # the runner stored every failure but transient ones
        if not exc.retryable:
            raise
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries),
                         max_retries=runner.settings.max_retries) from exc
