"""The Celery application's configuration, shared by the worker and the gateway.

The gateway only sends tasks by name (`send_task`), so it never imports the worker's code,
torch or ONNX Runtime.
"""

from __future__ import annotations

from celery import Celery

from kinemesh.services.common.settings import Settings

PROCESS_JOB_TASK = "kinemesh.process_job"


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    app = Celery("kinemesh", broker=settings.celery_broker_url, include=include or [])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in storage; the job record tracks state
        task_acks_late=True,  # a job is acknowledged only once it has finished
        task_reject_on_worker_lost=True,  # a killed worker's job goes back to the queue
        worker_prefetch_multiplier=1,  # a worker holds one job at a time
        task_default_queue=settings.queue,
        task_routes={PROCESS_JOB_TASK: {"queue": settings.queue}},
        # Redis redelivers an unacknowledged message after this; it must exceed the longest job.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # per-deployment bookkeeping keys, so stacks sharing a Redis never restore each other's jobs
            "unacked_key": f"{settings.key_prefix}:celery:unacked",
            "unacked_index_key": f"{settings.key_prefix}:celery:unacked_index",
            "unacked_mutex_key": f"{settings.key_prefix}:celery:unacked_mutex",
            # look for abandoned jobs every few seconds (one ZRANGE), not every 100 s (kombu's default)
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app
