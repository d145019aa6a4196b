"""Write-side use cases: chatflows, API keys; create, run, finish and cancel predictions."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from predictions import clients, local, metrics, ratelimit, runstore, secrets
from predictions.dbthreads import database_call
from predictions.engine import (
    ChatTurn,
    EngineConfig,
    EngineError,
    Flow,
    FlowValidationError,
    RunInput,
    parse_flow,
    run_flow,
)
from predictions.events import Publisher, RedisTransport, Transport, aretry_redis, get_transport
from predictions.exceptions import QueueUnavailable
from predictions.models import (
    ACTIVE_STATUSES,
    ApiKey,
    Chatflow,
    ChatMessage,
    ChatMessageRole,
    Prediction,
    PredictionStatus,
)
from predictions.streaming import DONE, Event, cancel_key

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Job and cancel-marker lifetimes: longer than any prediction can wait and run.
CANCEL_MARKER_TTL = 3600
# How long a run's database writes wait for a database that went away (restart, failover).
DATABASE_RETRY_SECONDS = 30.0


# --- chatflows and keys ------------------------------------------------------------------------


def _checked_flow_data(flow_data: Any, stored: str | None = None) -> tuple[str, Flow]:
    """Return flowData to store (a JSON string, secrets encrypted) and the parsed flow, or raise.

    Masked secrets ("********", as the API shows them) keep the values of `stored`.
    """
    try:
        text = flow_data if isinstance(flow_data, str) else json.dumps(flow_data)
        text = secrets.flow_data_keep_secrets(text, stored)
        flow = parse_flow(secrets.flow_data_decrypt(text))
    except RecursionError:
        raise FlowValidationError(
            "flowData is nested too deeply", code="invalid_flow_json"
        ) from None
    return secrets.flow_data_encrypt(text), flow


def chatflow_validate(
    *, flow_data: Any, api_config: dict[str, Any] | None = None, stored: str | None = None
) -> Flow:
    """Check flowData (and apiConfig's rate limit) without saving; raise EngineError/BadRequest.

    For forms that report problems before saving (admin); `stored` is the saved flowData whose
    secrets masked values stand for.
    """
    _, flow = _checked_flow_data(flow_data, stored)
    ratelimit.check_config(api_config or {})
    return flow


@transaction.atomic
def chatflow_create(
    *,
    name: str,
    flow_data: Any,
    deployed: bool = False,
    is_public: bool = False,
    chatbot_config: dict[str, Any] | None = None,
    api_config: dict[str, Any] | None = None,
    api_key: ApiKey | None = None,
    id: uuid.UUID | None = None,
) -> Chatflow:
    """Validate the graph (raising FlowValidationError naming the node) and store the chatflow."""
    text, flow = _checked_flow_data(flow_data)
    ratelimit.check_config(api_config or {})
    return Chatflow.objects.create(
        **({"id": id} if id else {}),
        name=name,
        flow_data=text,
        deployed=deployed,
        is_public=is_public,
        chatbot_config=chatbot_config or {},
        api_config=api_config or {},
        api_key=api_key,
        is_streaming=flow.is_streaming,
    )


@transaction.atomic
def chatflow_update(*, chatflow: Chatflow, **fields: Any) -> Chatflow:
    """Change the given fields; a new flowData is validated before anything is written."""
    if "flow_data" in fields:
        fields["flow_data"], flow = _checked_flow_data(fields["flow_data"], chatflow.flow_data)
        chatflow.is_streaming = flow.is_streaming
    if "api_config" in fields:
        ratelimit.check_config(fields["api_config"])
    for name, value in fields.items():
        setattr(chatflow, name, value)
    chatflow.save()
    return chatflow


@transaction.atomic
def apikey_create(*, name: str, can_manage: bool = False) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is shown once and never stored."""
    raw = ApiKey.generate()
    key = ApiKey(name=name, can_manage=can_manage)
    key.set_key(raw)
    key.save()
    return key, raw


@transaction.atomic
def apikey_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key at once, on every process (each request looks its key up).

    Chatflows bound to it stay bound and refuse every caller but staff and management keys
    until they are given another key (fail closed, as Flowise does for a deleted key).
    """
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


# --- creating predictions ----------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionRequest:
    question: str
    chat_id: str
    session_id: str
    streaming: bool
    override_config: dict[str, Any]
    history: list[dict[str, str]]


def _enqueue(prediction: Prediction, reply_to: str | None = None) -> None:
    """Enqueue the prediction's job; `reply_to`: the asker's inbox (see events.RedisTransport).

    One transaction: rq registers the queue's name (SADD) in a transaction of its own before the
    one that stores and pushes the job, unless it is given a pipeline to add both to.
    """
    import django_rq
    from rq import Retry

    queue = django_rq.get_queue(settings.QUEUE_NAME, connection=clients.get_sync_redis())
    retry = Retry(max=settings.JOB_MAX_ATTEMPTS - 1) if settings.JOB_MAX_ATTEMPTS > 1 else None
    job = {
        "func": "predictions.jobs.prediction_run_job",
        "args": (str(prediction.id),),
        "kwargs": {"reply_to": reply_to} if reply_to else None,
        "job_id": str(prediction.id),
        "retry": retry,
        "timeout": settings.PREDICTION_TIMEOUT + 60,
        "result_ttl": settings.REMOVE_ON_AGE,
        "failure_ttl": settings.REMOVE_ON_AGE,
        "description": f"prediction {prediction.id} chatflow {prediction.chatflow_id}",
    }
    if transaction.get_connection().in_atomic_block:
        # django-rq enqueues once the transaction commits (RQ COMMIT_MODE): not in a pipeline
        # that would be sent now.
        queue.enqueue_call(**job)
        return
    with queue.connection.pipeline() as pipe:
        queue.enqueue_call(pipeline=pipe, **job)
        pipe.execute()


def _check_queue_length() -> None:
    try:
        waiting = clients.get_sync_redis().llen(f"rq:queue:{settings.QUEUE_NAME}")
    except RedisError as exc:
        raise QueueUnavailable(
            "The queue is unavailable right now; retry in a few seconds",
            headers={"Retry-After": "5"},
        ) from exc
    if waiting >= settings.MAX_QUEUE_LENGTH:
        raise QueueUnavailable(
            f"The queue is full ({waiting} waiting, MAX_QUEUE_LENGTH={settings.MAX_QUEUE_LENGTH});"
            " retry later",
            code="queue_full",
            headers={"Retry-After": "10"},
        )


def prediction_create(
    *,
    chatflow: Chatflow,
    request: PredictionRequest,
    prediction_id: str | None = None,
    reply_to: str | None = None,
) -> Prediction:
    """Store a queued prediction; in queue mode enqueue its job once the row is committed.

    `prediction_id` and `reply_to` come from `relay.reserved` (the asker's mailbox).
    Raises QueueUnavailable (and marks the prediction failed) when Redis refuses the job.
    """
    if settings.MODE == "queue" and settings.MAX_QUEUE_LENGTH:
        _check_queue_length()
    # One INSERT, committed by itself (autocommit): the job is enqueued only after it, and
    # without BEGIN and COMMIT around it (two round trips per prediction).
    prediction = runstore.prediction_insert(
        Prediction(
            **({"id": uuid.UUID(prediction_id)} if prediction_id else {}),
            chatflow=chatflow,
            chat_id=request.chat_id,
            session_id=request.session_id,
            streaming=request.streaming,
            request={
                "question": request.question,
                # Secrets (e.g. an allowed openAIApiKey override) are stored encrypted.
                "overrideConfig": secrets.encrypt_secrets(request.override_config),
                "history": request.history,
                "streaming": request.streaming,
            },
        )
    )
    if settings.MODE == "queue":
        try:
            _enqueue(prediction, reply_to)
        except RedisError as exc:
            logger.warning("prediction %s not enqueued: %s", prediction.id, exc)
            Prediction.objects.filter(id=prediction.id).update(
                status=PredictionStatus.FAILED,
                error_code=QueueUnavailable.code,
                error_message="The queue (Redis) is unavailable",
                finished_at=timezone.now(),
            )
            raise QueueUnavailable(
                "The queue is unavailable right now; retry in a few seconds",
                headers={"Retry-After": "5"},
            ) from exc
    return prediction


aprediction_create = sync_to_async(prediction_create)


# --- running predictions (main mode task and queue-mode job alike) -----------------------------


@lru_cache(maxsize=512)
def _flow_for_version(version: str, flow_data: str) -> Flow:
    return parse_flow(secrets.flow_data_decrypt(flow_data, where=f"chatflow {version}"))


def flow_for(chatflow: Chatflow) -> Flow:
    """Return the parsed flow of a chatflow, cached by its version."""
    return _flow_for_version(chatflow.version, chatflow.flow_data)


def engine_config() -> EngineConfig:
    return EngineConfig(
        openai_api_key=settings.OPENAI_API_KEY,
        openai_base_url=settings.OPENAI_BASE_URL,
        connect_timeout=settings.LLM_CONNECT_TIMEOUT,
        read_timeout=settings.LLM_READ_TIMEOUT,
        offline_token_delay=settings.OFFLINE_MODEL_TOKEN_DELAY_MS / 1000,
        force_offline=settings.FLOW_LLM_PROVIDER == "offline",
        answer_timeout=settings.PREDICTION_TIMEOUT,
    )


# Parsed flows by chatflow id, with the chatflow's stamp they were parsed at (runstore).
_flows: dict[uuid.UUID, tuple[Any, Flow]] = {}
_FLOWS_MAX = 512


def _flow_of(chatflow_id: uuid.UUID, stamp: Any) -> Flow:
    """Return a chatflow's parsed flow: from the cache while its stamp (read with the claim) is
    unchanged, else from the stored chatflow."""
    cached = _flows.get(chatflow_id)
    if cached is not None and stamp is not None and cached[0] == stamp:
        return cached[1]
    flow = flow_for(Chatflow.objects.get(id=chatflow_id))
    if len(_flows) >= _FLOWS_MAX:
        _flows.clear()
    _flows[chatflow_id] = (stamp, flow)  # a save in between only makes the next run re-read
    return flow


def flows_forget_all() -> None:
    """Forget every parsed flow (tests recreate chatflows with the same ids)."""
    _flows.clear()


def _history_turns(prediction: Prediction, flow: Flow) -> tuple[ChatTurn, ...]:
    turns = [
        ChatTurn(role=item["role"], content=item["content"])
        for item in prediction.request.get("history") or []
    ]
    if flow.uses_memory:
        limit = settings.MAX_HISTORY_MESSAGES
        if flow.memory_window is not None:
            limit = min(limit, 2 * flow.memory_window)
        rows = runstore.history(prediction.chatflow_id, prediction.session_id, limit)
        turns.extend(ChatTurn(role=role, content=content) for role, content in rows)
    return tuple(turns)


def _run_input(prediction: Prediction, chatflow_stamp: Any) -> tuple[Flow, RunInput]:
    """Load what a claimed prediction's run needs: its flow, history and overrides."""
    flow = _flow_of(prediction.chatflow_id, chatflow_stamp)
    run_input = RunInput(
        question=prediction.question,
        history=_history_turns(prediction, flow),
        overrides=secrets.decrypt_secrets(
            prediction.request.get("overrideConfig") or {}, where=f"prediction {prediction.id}"
        ),
        chat_id=prediction.chat_id,
        session_id=prediction.session_id,
    )
    return flow, run_input


def _claim_and_load(
    prediction_id: str, worker_name: str
) -> tuple[Prediction, Any, tuple[Flow, RunInput] | None] | None:
    """The claim, then the reads of `_run_input` in the same trip to a database thread; the
    reads' result is None when the database failed them (the claim stands)."""
    claimed = runstore.prediction_claim(prediction_id, worker_name)
    if claimed is None:
        return None
    prediction, chatflow_stamp = claimed
    try:
        return prediction, chatflow_stamp, _run_input(prediction, chatflow_stamp)
    except (OperationalError, InterfaceError):
        _drop_broken_connections()
        return prediction, chatflow_stamp, None


async def _aclaim(prediction_id: str, worker_name: str) -> tuple[Prediction, Flow, RunInput] | None:
    """Mark an active prediction running and load what the run needs; None if it must not run.

    The claim is one statement, committed by itself (no BEGIN and COMMIT around it), so a retry
    after a lost connection counts one attempt; the reads after it, done in the same trip to a
    database thread, are retried on their own if the database failed them.
    """
    claimed = await aretry_database(_claim_and_load, prediction_id, worker_name)
    if claimed is None:
        return None
    prediction, chatflow_stamp, loaded = claimed
    if loaded is None:
        loaded = await aretry_database(_run_input, prediction, chatflow_stamp)
    flow, run_input = loaded
    return prediction, flow, run_input


def _result_body(prediction: Prediction, text: str, memory_type: str | None, extra: dict) -> dict:
    body: dict[str, Any] = {
        "text": text,
        "question": prediction.question,
        "chatId": prediction.chat_id,
        "chatMessageId": str(prediction.chat_message_id),
        "isStreamValid": False,
        "sessionId": prediction.session_id,
    }
    if memory_type:
        body["memoryType"] = memory_type
    body.update(extra)
    return body


def prediction_finish(*, prediction: Prediction, body: dict[str, Any]) -> bool:
    """Record success and write both chat messages, unless the prediction stopped meanwhile."""
    now = timezone.now()
    common = {
        "chatflow_id": prediction.chatflow_id,
        "prediction_id": prediction.id,
        "chat_id": prediction.chat_id,
        "session_id": prediction.session_id,
        "memory_type": body.get("memoryType", ""),
    }
    return runstore.prediction_succeed_with_messages(
        prediction.id,
        body,
        [
            ChatMessage(
                role=ChatMessageRole.USER, content=prediction.question, created_at=now, **common
            ),
            ChatMessage(
                id=prediction.chat_message_id,
                role=ChatMessageRole.API,
                content=body["text"],
                source_documents=body.get("sourceDocuments"),
                used_tools=body.get("usedTools"),
                created_at=now + timezone.timedelta(microseconds=1),
                **common,
            ),
        ],
    )


def prediction_fail(
    *, prediction_id: str, code: str, message: str, status: str = PredictionStatus.FAILED
) -> bool:
    """Record a failure (or cancel) of an active prediction; never overwrite a terminal status."""
    return bool(
        Prediction.objects.filter(id=prediction_id, status__in=ACTIVE_STATUSES).update(
            status=status,
            error_code=code,
            error_message=message[:2000],
            finished_at=timezone.now(),
        )
    )


aprediction_fail = sync_to_async(prediction_fail)


def _drop_broken_connections() -> None:
    """Close this thread's connections that failed and no longer answer (a database restart)."""
    for connection in connections.all(initialized_only=True):
        broken = connection.connection is not None and connection.errors_occurred
        if broken and not connection.is_usable():
            connection.close()


def _dropping_broken_connections(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call `fn`; when the database failed it, close the broken connection on this thread."""
    try:
        return fn(*args, **kwargs)
    except (OperationalError, InterfaceError):
        _drop_broken_connections()
        raise


async def aretry_database(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a sync ORM function on a database thread, retrying while the database is unreachable.

    For a prediction already accepted (the worker's claim and outcome, a waiting client's
    answer): a database restart delays it instead of losing it. Gives up (re-raises) after
    DATABASE_RETRY_SECONDS. Each call is one transaction at most, so a retry never writes half
    (and the worker's calls may each run on another of its threads, see `dbthreads`).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + DATABASE_RETRY_SECONDS
    delay = 0.1
    call = database_call(_dropping_broken_connections)
    while True:
        try:
            return await call(fn, *args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if loop.time() + delay > give_up_at:
                raise
            logger.warning("database unavailable, retrying %s: %s", fn.__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def acancel_requested(prediction_id: str) -> bool:
    if settings.MODE == "queue":
        return bool(await clients.get_async_redis().exists(cancel_key(prediction_id)))
    return local.cancel_requested(prediction_id)


async def _abegin(
    transport: Transport, prediction: Prediction, reply_to: str | None
) -> tuple[int, bool, bool]:
    """Where the prediction's events stand, whether it was asked to stop, and whether its
    `start` went out: in queue mode in one round trip, which also publishes the `start` of a
    run whose stream is empty (unless stopped)."""
    prediction_id = str(prediction.id)
    if not isinstance(transport, RedisTransport):
        seq = await transport.last_seq(prediction_id)
        return seq, await acancel_requested(prediction_id), False
    start = Event(seq=1, event="start", data="")
    seq, cancelled, started = await transport.begin(
        prediction_id, cancel_key(prediction_id), start, reply_to
    )
    # A first attempt's stream holds nothing before its start: one there is this run's own
    # (aretry_redis repeats a call whose connection broke, and the first may have landed).
    return seq, cancelled, started or (prediction.attempts == 1 and seq == 1)


async def aprediction_run(
    prediction_id: str, *, worker_name: str = "", reply_to: str | None = None
) -> None:
    """Run a prediction: claim it, run the engine, record the outcome and emit its events
    (live to `reply_to` too, the inbox of the web process that asked, in queue mode).

    Emits start, tokens (for streaming requests), then metadata + end on success, error + end on
    failure, abort + end on cancel. A CancelledError that is not a requested cancel (worker
    shutdown) propagates without a terminal status, so the job can run again.
    """
    transport = get_transport()
    publisher: Publisher | None = None
    try:
        claimed = await _aclaim(prediction_id, worker_name)
        if claimed is None:
            logger.info("prediction %s not run: no longer active", prediction_id)
            return
        prediction, flow, run_input = claimed
        # Redis may be restarting: wait for it rather than drop a claimed prediction.
        what = f"prediction {prediction_id}"
        seq, cancelled, started = await aretry_redis(
            lambda: _abegin(transport, prediction, reply_to), what=what
        )
        # Queue mode batches a run's token writes (the in-process transport has none to save).
        coalesce = settings.TOKEN_COALESCE_MS / 1000 if settings.MODE == "queue" else 0.0
        publisher = Publisher(
            transport, prediction_id, start_seq=seq, coalesce=coalesce, reply_to=reply_to
        )
        if cancelled:
            await metrics.acount(metrics.CANCEL_MARKER_HITS)  # metrics
            await _aend_cancelled(prediction_id, publisher)
            return
        logger.info("prediction %s started (attempt %s)", prediction_id, prediction.attempts)
        metrics.prediction_started(prediction)  # metrics
        if not started:
            if prediction.attempts > 1 and publisher.seq:
                # An earlier attempt left events: drop them and mark where this one begins. (A
                # stream deleted meanwhile, e.g. by an admin retry, started afresh from seq 1.)
                await aretry_redis(lambda: transport.restart(prediction_id), what=what)
                await publisher.emit("retry", {"attempt": prediction.attempts})
            await publisher.emit("start", "")
        await _arun_engine(prediction, flow, run_input, publisher)
    except asyncio.CancelledError:
        if await asyncio.shield(acancel_requested(prediction_id)):
            if publisher is None:
                seq = await asyncio.shield(transport.last_seq(prediction_id))
                publisher = Publisher(transport, prediction_id, start_seq=seq, reply_to=reply_to)
            await asyncio.shield(_aend_cancelled(prediction_id, publisher))
        raise


async def _arun_engine(
    prediction: Prediction, flow: Flow, run_input: RunInput, publisher: Publisher
) -> None:
    prediction_id = str(prediction.id)
    task = asyncio.current_task()

    def raise_if_cancelled() -> None:
        # Some code swallows a cancellation that lands just as what it waits for is done
        # (asgiref's sync_to_async returns the thread's result instead; so does Python 3.11's
        # wait_for, which redis-py wraps around each command it sends): honour it here.
        if task is not None and task.cancelling():
            logger.debug("prediction %s: cancellation swallowed below; re-raising", prediction_id)
            raise asyncio.CancelledError

    async def emit(name: str, data: Any) -> None:
        raise_if_cancelled()
        metrics.prediction_event(prediction_id, name)  # metrics
        await publisher.emit(name, data)
        # A stop that the write swallowed would otherwise wait for the next token.
        raise_if_cancelled()

    try:
        async with asyncio.timeout(settings.PREDICTION_TIMEOUT):
            # A non-streaming request asks the model for its whole answer at once.
            result = await run_flow(
                flow,
                run_input,
                emit=emit if prediction.streaming else None,
                config=engine_config(),
                http=clients.get_http_client(),
            )
    except TimeoutError:
        message = (
            f"The prediction took longer than PREDICTION_TIMEOUT={settings.PREDICTION_TIMEOUT}s"
        )
        await _aend_failed(prediction_id, publisher, "prediction_timeout", message)
        return
    except EngineError as exc:
        await _aend_failed(prediction_id, publisher, exc.code, exc.message)
        return
    except Exception:
        logger.exception("prediction %s failed unexpectedly", prediction_id)
        await _aend_failed(prediction_id, publisher, "internal_error", "Internal error")
        raise
    extra: dict[str, Any] = {}
    if result.source_documents:
        extra["sourceDocuments"] = result.source_documents
    if result.used_tools:
        extra["usedTools"] = result.used_tools
    raise_if_cancelled()
    body = _result_body(prediction, result.text, result.memory_type, extra)
    if not await aretry_database(prediction_finish, prediction=prediction, body=body):
        # Stopped meanwhile (by a cancel, which ends the stream itself, or by the web side's
        # deadline), or the first try committed before its connection broke.
        logger.info("prediction %s finished after it was stopped; answer dropped", prediction_id)
        await _aend_as_stored(prediction_id, publisher)
        return
    for name, data in extra.items():
        await publisher.emit(name, data)
    await publisher.end("metadata", _metadata(body), result=body)
    logger.info("prediction %s succeeded", prediction_id)
    metrics.prediction_succeeded(prediction_id)  # metrics


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    meta = {k: body[k] for k in ("chatId", "chatMessageId", "question", "sessionId") if k in body}
    if "memoryType" in body:
        meta["memoryType"] = body["memoryType"]
    return meta


async def _aend_failed(prediction_id: str, publisher: Publisher, code: str, message: str) -> None:
    logger.info("prediction %s failed: %s", prediction_id, code)
    if await aretry_database(
        prediction_fail, prediction_id=prediction_id, code=code, message=message
    ):
        await metrics.aprediction_failed(prediction_id, code)  # metrics
        await publisher.end("error", message)


async def _aend_cancelled(prediction_id: str, publisher: Publisher) -> None:
    logger.info("prediction %s cancelled", prediction_id)
    if await aretry_database(
        prediction_fail,
        prediction_id=prediction_id,
        code="cancelled",
        message="Stopped by request",
        status=PredictionStatus.CANCELLED,
    ):
        await metrics.aprediction_cancelled(prediction_id)  # metrics
        await publisher.end("abort", DONE)
        return
    # The stop lost the race to a terminal status (e.g. it came while the answer was being
    # saved): end the stream as the database says it ended.
    await _aend_as_stored(prediction_id, publisher)


async def _aend_as_stored(prediction_id: str, publisher: Publisher) -> None:
    """End the stream as the database says the prediction ended."""
    prediction = await aretry_database(Prediction.objects.get, id=prediction_id)
    if prediction.status == PredictionStatus.SUCCEEDED and prediction.result:
        await publisher.end("metadata", _metadata(prediction.result))
    elif prediction.status == PredictionStatus.CANCELLED:
        await publisher.end("abort", DONE)
    else:
        await publisher.end("error", prediction.error_message or "The prediction failed")


# --- cancel ------------------------------------------------------------------------------------


def _reply_to(prediction_id: str) -> str | None:
    """The inbox of the web process that asked for the prediction (its job's `reply_to`)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(prediction_id, connection=clients.get_sync_redis())
    except NoSuchJobError:
        return None
    return job.kwargs.get("reply_to")


def _signal_worker(prediction_id: str) -> None:
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError

    try:
        send_stop_job_command(clients.get_sync_redis(), prediction_id)
        metrics.count(metrics.CANCEL_DISPATCHED)  # metrics
    except (InvalidJobOperation, NoSuchJobError) as exc:
        logger.info("prediction %s: no running job to stop (%s)", prediction_id, exc)


async def aprediction_cancel(*, prediction: Prediction) -> str:
    """Stop a prediction wherever it is; return its status afterwards.

    Sets the cancel marker first, so a worker that claims the job later never runs it; a queued
    prediction is cancelled here (abort + end emitted); a running one is stopped by its runner.
    """
    pid = str(prediction.id)
    if prediction.is_terminal():
        return prediction.status
    if settings.MODE == "queue":
        await clients.get_async_redis().set(cancel_key(pid), "1", ex=CANCEL_MARKER_TTL)
        await metrics.acount(metrics.CANCEL_PUBLISHED)  # metrics
    else:
        local.request_cancel(pid)
    won = await sync_to_async(
        lambda: Prediction.objects.filter(id=pid, status=PredictionStatus.QUEUED).update(
            status=PredictionStatus.CANCELLED,
            error_code="cancelled",
            error_message="Stopped by request",
            finished_at=timezone.now(),
        )
    )()
    transport = get_transport()
    if won:
        await metrics.aprediction_cancelled(pid, prediction.chatflow_id)  # metrics
        reply_to = None
        if settings.MODE == "queue":
            reply_to = await sync_to_async(_reply_to, thread_sensitive=False)(pid)
        publisher = Publisher(
            transport, pid, start_seq=await transport.last_seq(pid), reply_to=reply_to
        )
        await publisher.end("abort", DONE)
        return PredictionStatus.CANCELLED
    if settings.MODE == "queue":
        await sync_to_async(_signal_worker, thread_sensitive=False)(pid)
    else:
        local.cancel_task(pid)
    return PredictionStatus.CANCELLED


# --- lost workers ------------------------------------------------------------------------------

WORKER_LOST_MESSAGE = (
    "The worker running this prediction stopped answering (killed or lost); it was not retried"
)


async def _aend_lost(prediction_id: str, reply_to: str | None) -> None:
    transport = get_transport()
    if await aprediction_fail(
        prediction_id=prediction_id, code="worker_lost", message=WORKER_LOST_MESSAGE
    ):
        await metrics.aprediction_failed(prediction_id, "worker_lost")  # metrics
        publisher = Publisher(
            transport,
            prediction_id,
            start_seq=await transport.last_seq(prediction_id),
            reply_to=reply_to,
        )
        await publisher.end("error", WORKER_LOST_MESSAGE)
        logger.warning("prediction %s failed: worker_lost", prediction_id)


def predictions_mark_lost(job_ids: list[str]) -> None:
    """Fail the predictions of jobs whose worker died (the worker's abandoned-job sweep).

    Each gets status failed, code worker_lost, and `error` + `end` on its stream, so waiting
    clients answer instead of hanging.
    """
    from asgiref.sync import async_to_sync
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    failed: list[tuple[str, str | None]] = []
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=clients.get_sync_redis())
        except NoSuchJobError:
            status, reply_to = None, None
        else:
            status, reply_to = job.get_status(), job.kwargs.get("reply_to")
        # A job with retries left is back in the queue: its next attempt restarts the stream.
        if status in (None, JobStatus.FAILED, JobStatus.STOPPED):
            failed.append((job_id, reply_to))

    async def run() -> None:
        for job_id, reply_to in failed:
            await _aend_lost(job_id, reply_to)

    async_to_sync(run)()
