"""The worker's Celery application: `celery -A kinemesh.services.worker.celery_app worker`."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown

from kinemesh.services.common.queue import make_celery
from kinemesh.services.common.settings import get_settings

app = make_celery(get_settings(), include=["kinemesh.services.worker.tasks"])


@worker_ready.connect
def _load_models(**_: object) -> None:
    """Load models once per worker process, before the first job arrives."""
    from kinemesh.services.worker.runner import get_runner

    runner = get_runner()
    runner.warm_up()
    runner.announce_ready()


@worker_shutdown.connect
def _release_models(**_: object) -> None:
    from kinemesh.services.worker.runner import get_runner

    if get_runner.cache_info().currsize:
        get_runner().pipeline.close()
