"""Job records in Redis.

One hash per job (`{p}:job:{id}`), a per-tenant sorted set for listing, idempotency keys, a
pub/sub channel per job for progress events, and per-state counters for metrics. Every state
change is one Lua script, so a cancel racing a worker's finish has exactly one winner.

The gateway uses `AsyncJobStore` (redis.asyncio), the worker and CLI `JobStore` (sync); both
share the keys, the scripts and the decoding below.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

from kinemesh.services.common.errors import KinemeshError, NotFound
from kinemesh.services.common.schemas import (
    ClipInfo,
    JobDocument,
    JobEvent,
    JobOptions,
    JobState,
    Problem,
)

ACTIVE = (JobState.queued.value, JobState.running.value)

# KEYS[1] job hash, KEYS[2] state counters; ARGV[1] now, ARGV[2] the job's event channel.
# Every change bumps `seq` and publishes an event carrying it, so a listener can drop stale events.
_PUBLISH = """
local function publish(job, channel)
  local seq = redis.call('HINCRBY', job, 'seq', 1)
  local f = redis.call('HMGET', job, 'id', 'state', 'stage', 'progress', 'error')
  local ev = {id=f[1], state=f[2], stage=f[3] or cjson.null, progress=tonumber(f[4]) or 0, seq=seq}
  if f[5] and f[5] ~= '' then ev['error'] = cjson.decode(f[5]) end
  redis.call('PUBLISH', channel, cjson.encode(ev))
end
local function move(counters, from, to)
  redis.call('HINCRBY', counters, from, -1)
  redis.call('HINCRBY', counters, to, 1)
end
"""

# A worker takes a job: queued|running -> running (running again after a redelivery).
# ARGV[3] worker name, ARGV[4] most attempts, ARGV[5] the problem JSON stored when a job has
# already been started that many times without finishing (it keeps killing its worker).
# Returns {state before, this attempt's number (0: not started)}.
_START = _PUBLISH + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {false, 0} end
if state ~= 'queued' and state ~= 'running' then return {state, 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if state == 'running' and attempts >= tonumber(ARGV[4]) then
  move(KEYS[2], 'running', 'failed')
  redis.call('HSET', KEYS[1], 'state', 'failed', 'stage', 'failed', 'error', ARGV[5],
    'updated_at', ARGV[1], 'finished_at', ARGV[1])
  publish(KEYS[1], ARGV[2])
  return {'failed', 0}
end
if state == 'queued' then move(KEYS[2], 'queued', 'running') end
redis.call('HSET', KEYS[1], 'state', 'running', 'updated_at', ARGV[1], 'worker', ARGV[3],
  'stage', 'starting', 'progress', '0')
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then redis.call('HSET', KEYS[1], 'started_at', ARGV[1]) end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
publish(KEYS[1], ARGV[2])
return {state, attempt}
"""

# Progress of attempt ARGV[5]. Returns the state, or 'superseded' when a later attempt owns
# the job, so a worker notices cancellation and stale runs without another round trip.
_PROGRESS = _PUBLISH + """
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts')
if f[1] ~= 'running' then return f[1] end
if f[2] ~= ARGV[5] then return 'superseded' end
redis.call('HSET', KEYS[1], 'stage', ARGV[3], 'progress', ARGV[4], 'updated_at', ARGV[1])
publish(KEYS[1], ARGV[2])
return 'running'
"""

# Terminal transition. ARGV[3] new state, ARGV[4] allowed states joined by ',', ARGV[5] the
# attempt that must own the job ('0': any, for the gateway's cancel), ARGV[6..] field/value
# pairs. Returns the state before, or 'superseded'.
_FINISH = _PUBLISH + """
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts')
local state = f[1]
if not state then return nil end
local allowed = false
for s in string.gmatch(ARGV[4], '[^,]+') do if s == state then allowed = true end end
if not allowed then return state end
if ARGV[5] ~= '0' and f[2] ~= ARGV[5] then return 'superseded' end
move(KEYS[2], state, ARGV[3])
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_at', ARGV[1], 'finished_at', ARGV[1])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[3] == 'succeeded' then redis.call('HINCRBY', KEYS[1], 'completions', 1) end
publish(KEYS[1], ARGV[2])
return state
"""

SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Keys:
    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def channel(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def idempotency(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:idem:{tenant}:{digest}"

    def counters(self) -> str:
        return f"{self.prefix}:stats:jobs"

    def stage_histogram(self, stage: str) -> str:
        return f"{self.prefix}:stats:stage:{stage}"

    def stage_names(self) -> str:
        return f"{self.prefix}:stats:stages"

    def retention(self) -> str:
        return f"{self.prefix}:retention"

    def worker_ready(self, pid: int) -> str:
        return f"{self.prefix}:worker:ready:{pid}"

    def api_key(self, key_hash: str) -> str:
        return f"{self.prefix}:apikey:{key_hash}"

    def api_key_id(self, key_id: str) -> str:
        return f"{self.prefix}:apikeyid:{key_id}"


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: the public document plus server-side fields."""

    doc: JobDocument
    tenant: str
    input_key: str
    completions: int
    request_hash: str


def new_job_id() -> str:
    return uuid.uuid4().hex


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _json(value: str | None, default: Any = None) -> Any:
    return orjson.loads(value) if value else default


def document_fields(raw: dict[str, str]) -> dict[str, Any]:
    """Hash fields -> the JobDocument's values (the one mapping, used by both paths below)."""
    job_id, state = raw["id"], raw["state"]
    return {
        "id": job_id,
        "state": state,
        "stage": raw.get("stage") or None,
        "progress": float(raw.get("progress") or 0.0),
        "created_at": _ts(raw["created_at"]),
        "started_at": _ts(raw.get("started_at")),
        "finished_at": _ts(raw.get("finished_at")),
        "updated_at": _ts(raw.get("updated_at") or raw["created_at"]),
        "attempts": int(raw.get("attempts") or 0),
        "options": _json(raw["options"]),
        "clip": _json(raw.get("clip")),
        "error": _json(raw.get("error")),
        "timings": _json(raw.get("timings"), []),
        "result_url": f"/v1/jobs/{job_id}/result" if state == JobState.succeeded.value else None,
        "artifacts": _json(raw.get("artifacts"), []),
    }


def document_json(raw: dict[str, str]) -> bytes:
    """The job document as JSON straight from the hash: the status hot path skips model validation.

    The hash is only written through this module's validated models, and a test checks that
    this equals `decode_record(raw).doc`.
    """
    return orjson.dumps(document_fields(raw))


def decode_record(raw: dict[str, str]) -> JobRecord:
    """Hash fields (decoded to str) -> JobRecord, validated."""
    return JobRecord(
        doc=JobDocument.model_validate(document_fields(raw)),
        tenant=raw["tenant"],
        input_key=raw.get("input_key", ""),
        completions=int(raw.get("completions") or 0),
        request_hash=raw.get("request_hash", ""),
    )


def new_record_fields(job_id: str, tenant: str, options: JobOptions, clip: ClipInfo, input_key: str,
                      request_hash: str) -> dict[str, str]:
    now = str(time.time())
    return {
        "id": job_id,
        "tenant": tenant,
        "state": JobState.queued.value,
        "stage": "queued",
        "progress": "0",
        "created_at": now,
        "updated_at": now,
        "attempts": "0",
        "completions": "0",
        "options": options.model_dump_json(),
        "clip": clip.model_dump_json(),
        "input_key": input_key,
        "request_hash": request_hash,
    }


def problem_json(err: KinemeshError) -> str:
    return Problem.model_validate(err.problem()).model_dump_json(exclude_none=True)


def error_fields(err: KinemeshError) -> dict[str, str]:
    return {"error": problem_json(err), "stage": "failed"}


def event_from_record(rec: JobRecord) -> JobEvent:
    d = rec.doc
    return JobEvent(id=d.id, state=d.state, stage=d.stage, progress=d.progress, error=d.error)


class _Base:
    def __init__(self, prefix: str, job_ttl_s: int) -> None:
        self.keys = Keys(prefix)
        self.job_ttl_s = job_ttl_s

    @staticmethod
    def _flatten(fields: dict[str, str]) -> list[str]:
        out: list[str] = []
        for k, v in fields.items():
            out += [k, v]
        return out


class JobStore(_Base):
    """Synchronous store used by the worker and the CLI."""

    def __init__(self, client: redis.Redis, prefix: str, job_ttl_s: int) -> None:
        super().__init__(prefix, job_ttl_s)
        self.r = client
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._finish = client.register_script(_FINISH)

    @classmethod
    def from_url(cls, url: str, prefix: str, job_ttl_s: int) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix, job_ttl_s)

    def get(self, job_id: str) -> JobRecord:
        raw = self.r.hgetall(self.keys.job(job_id))
        if not raw:
            raise NotFound(f"job {job_id} does not exist")
        return decode_record(raw)

    def current(self, job_id: str, attempt: int) -> str | None:
        """The job's state as attempt `attempt` sees it: a state, SUPERSEDED, or None if gone."""
        state, attempts = self.r.hmget(self.keys.job(job_id), "state", "attempts")
        if state == JobState.running.value and attempts != str(attempt):
            return SUPERSEDED
        return state

    def start(self, job_id: str, worker: str, max_attempts: int, lost: KinemeshError) -> tuple[str | None, int]:
        """Begin an attempt: (state before, attempt number); attempt 0 means do not run."""
        prev, attempt = self._start(
            keys=[self.keys.job(job_id), self.keys.counters()],
            args=[time.time(), self.keys.channel(job_id), worker, max_attempts, problem_json(lost)])
        return prev or None, int(attempt)

    def progress(self, job_id: str, attempt: int, stage: str, fraction: float) -> str | None:
        return self._progress(keys=[self.keys.job(job_id), self.keys.counters()],
                              args=[time.time(), self.keys.channel(job_id), stage, f"{fraction:.4f}", attempt])

    def finish(self, job_id: str, state: JobState, fields: dict[str, str], attempt: int,
               allowed: tuple[str, ...] = (JobState.running.value,)) -> str | None:
        """Terminal transition by attempt `attempt`; returns the state before (or SUPERSEDED)."""
        return self._finish(
            keys=[self.keys.job(job_id), self.keys.counters()],
            args=[time.time(), self.keys.channel(job_id), state.value, ",".join(allowed), attempt,
                  *self._flatten(fields)],
        )

    def schedule_deletion(self, key_or_prefix: str, after_s: float) -> None:
        """Delete a storage object (or a prefix ending in '/') once `after_s` has passed."""
        self.r.zadd(self.keys.retention(), {key_or_prefix: time.time() + after_s})

    def due_deletions(self, limit: int = 100) -> list[str]:
        """Objects whose time has come; the caller calls `deleted` once each is gone."""
        return self.r.zrangebyscore(self.keys.retention(), "-inf", time.time(), start=0, num=limit)

    def deleted(self, key_or_prefix: str) -> None:
        self.r.zrem(self.keys.retention(), key_or_prefix)

    def observe_stage(self, stage: str, seconds: float, buckets: tuple[float, ...]) -> None:
        """Add one stage duration to the shared histogram the gateway exports."""
        key = self.keys.stage_histogram(stage)
        pipe = self.r.pipeline(transaction=False)
        for b in buckets:
            if seconds <= b:
                pipe.hincrby(key, f"le:{b}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", seconds)
        pipe.sadd(self.keys.stage_names(), stage)
        pipe.execute()


class AsyncJobStore(_Base):
    """Asynchronous store used by the gateway."""

    def __init__(self, client: aredis.Redis, prefix: str, job_ttl_s: int) -> None:
        super().__init__(prefix, job_ttl_s)
        self.r = client
        self._finish = client.register_script(_FINISH)

    async def create(self, tenant: str, options: JobOptions, clip: ClipInfo, input_key: str, request_hash: str,
                     job_id: str, idempotency_key: str | None = None) -> JobRecord:
        fields = new_record_fields(job_id, tenant, options, clip, input_key, request_hash)
        if idempotency_key:
            fields["idempotency_key"] = self.keys.idempotency(tenant, idempotency_key)
        pipe = self.r.pipeline(transaction=True)
        # entries older than a record can live point at nothing: drop them as new ones come
        pipe.zremrangebyscore(self.keys.tenant_jobs(tenant), "-inf", f"({time.time() - self.job_ttl_s}")
        pipe.hset(self.keys.job(job_id), mapping=fields)
        pipe.expire(self.keys.job(job_id), self.job_ttl_s)
        pipe.zadd(self.keys.tenant_jobs(tenant), {job_id: float(fields["created_at"])})
        pipe.expire(self.keys.tenant_jobs(tenant), self.job_ttl_s)
        pipe.hincrby(self.keys.counters(), JobState.queued.value, 1)
        await pipe.execute()
        return decode_record(fields)

    async def get_raw(self, job_id: str, tenant: str) -> dict[str, str]:
        """The job's hash, if it belongs to `tenant`; NotFound otherwise (never 403: ids don't leak)."""
        raw = await self.r.hgetall(self.keys.job(job_id))
        if not raw or raw.get("tenant") != tenant:
            raise NotFound(f"job {job_id} does not exist")
        return raw

    async def get(self, job_id: str, tenant: str) -> JobRecord:
        return decode_record(await self.get_raw(job_id, tenant))

    async def list(self, tenant: str, limit: int, before: float | None) -> tuple[list[JobRecord], float | None]:
        key = self.keys.tenant_jobs(tenant)
        max_score = f"({before}" if before is not None else "+inf"
        ids = await self.r.zrevrangebyscore(key, max_score, "-inf", start=0, num=limit + 1, withscores=True)
        page, more = ids[:limit], len(ids) > limit
        pipe = self.r.pipeline(transaction=False)
        for job_id, _ in page:
            pipe.hgetall(self.keys.job(job_id))
        raws = await pipe.execute()
        records, gone = [], []
        for (job_id, _), raw in zip(page, raws, strict=True):
            if raw:
                records.append(decode_record(raw))
            else:
                gone.append(job_id)
        if gone:
            await self.r.zrem(key, *gone)
        cursor = page[-1][1] if more and page else None
        return records, cursor

    async def cancel(self, job_id: str, tenant: str) -> JobState | None:
        await self.get(job_id, tenant)
        prev = await self._finish(
            keys=[self.keys.job(job_id), self.keys.counters()],
            args=[time.time(), self.keys.channel(job_id), JobState.cancelled.value, ",".join(ACTIVE), 0,
                  "stage", "cancelled"],
        )
        return JobState(prev) if prev else None

    async def delete(self, job_id: str, tenant: str) -> None:
        """Remove the record, its listing entry, its Idempotency-Key and its share of the counters."""
        raw = await self.r.hmget(self.keys.job(job_id), "state", "idempotency_key")
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.job(job_id))
        pipe.zrem(self.keys.tenant_jobs(tenant), job_id)
        if raw[0] in ACTIVE:
            pipe.hincrby(self.keys.counters(), raw[0], -1)
        if raw[1]:
            pipe.delete(raw[1])
        await pipe.execute()

    async def claim_idempotency(self, tenant: str, key: str, job_id: str, request_hash: str,
                                ttl_s: int) -> tuple[str, str] | None:
        """Claim `key` for a new job; if already claimed, return (job_id, request_hash) of the owner."""
        k = self.keys.idempotency(tenant, key)
        if await self.r.set(k, f"{job_id}|{request_hash}", nx=True, ex=ttl_s):
            return None
        value = await self.r.get(k)
        if value is None:  # expired between the two calls: claim again
            return await self.claim_idempotency(tenant, key, job_id, request_hash, ttl_s)
        owner, _, owner_hash = value.partition("|")
        return owner, owner_hash

    async def release_idempotency(self, tenant: str, key: str, job_id: str) -> None:
        k = self.keys.idempotency(tenant, key)
        value = await self.r.get(k)
        if value and value.startswith(job_id + "|"):
            await self.r.delete(k)

    async def state_counts(self) -> dict[str, int]:
        raw = await self.r.hgetall(self.keys.counters())
        return {k: int(v) for k, v in raw.items()}

    async def stage_histograms(self) -> dict[str, dict[str, float]]:
        stages = sorted(await self.r.smembers(self.keys.stage_names()))
        pipe = self.r.pipeline(transaction=False)
        for stage in stages:
            pipe.hgetall(self.keys.stage_histogram(stage))
        return {stage: {k: float(v) for k, v in h.items()}
                for stage, h in zip(stages, await pipe.execute(), strict=True)}
