"""The worker's Celery application: `celery -A kinemesh.services.worker.celery_app worker`."""

from __future__ import annotations

import logging
import os

from celery.signals import worker_ready, worker_shutdown

from kinemesh.services.common.queue import make_celery
from kinemesh.services.common.settings import get_settings

log = logging.getLogger("kinemesh.worker")

app = make_celery(get_settings(), include=["kinemesh.services.worker.tasks"])


@worker_ready.connect
def _load_models(**_: object) -> None:
    """Load models once per worker process, before the first job arrives."""
    from kinemesh.services.worker.runner import RetentionSweeper, get_runner

    runner = get_runner()
    try:
        runner.warm_up()
    except Exception:
        # A worker without its models would fail every job it takes: exit so the
        # orchestrator restarts it and the queue waits for a healthy worker.
        log.critical("could not load the models; exiting", exc_info=True)
        os._exit(3)
    runner.announce_ready()
    RetentionSweeper(runner, runner.settings.retention_sweep_s).start()


@worker_shutdown.connect
def _release_models(**_: object) -> None:
    from kinemesh.services.worker.runner import get_runner

    if get_runner.cache_info().currsize:
        get_runner().pipeline.close()
