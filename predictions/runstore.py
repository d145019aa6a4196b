"""The few statements every prediction makes, in plain SQL instead of the ORM.

A request stores the new prediction; a run claims its row (with its chatflow's version), reads
the chat history, and records its answer with two chat messages. Built by the ORM these cost ~3x
the CPU of the same statements sent directly (0.66 ms against 0.22 ms per primary-key read,
measured on the benchmark machine), and they are most of a worker's database time, so they are
written out here once. Values go through each field's own `pre_save` and `get_db_prep_save`
and rows through `Model.from_db`, so they are stored and read exactly as the ORM would; the SQL
(INSERT, UPDATE … RETURNING, multi-row INSERT; on PostgreSQL also one `WITH … UPDATE` feeding an
INSERT) is the same on PostgreSQL and SQLite (3.35+), and each statement's text is built once per
database vendor. Everything else keeps using the ORM.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from predictions.models import ACTIVE_STATUSES, Chatflow, ChatMessage, Prediction, PredictionStatus


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _column(model: type[Model], name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(name).column)


def _value(model: type[Model], name: str, value: Any) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def _pk(model: type[Model], value: str | uuid.UUID) -> Any:
    if not isinstance(value, uuid.UUID):
        value = uuid.UUID(str(value))
    return _value(model, model._meta.pk.name, value)


@functools.cache
def _converters(model: type[Model], vendor: str) -> list[tuple[int, Any, list[Any]]]:
    """Per column of `model`: the converters the ORM applies to it when it reads (compiler's
    backend converters, then the field's)."""
    result = []
    for i, field in enumerate(model._meta.concrete_fields):
        col = field.get_col(model._meta.db_table)
        funcs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if funcs:
            result.append((i, col, funcs))
    return result


def _from_row(model: type[Model], row: Sequence[Any]) -> Model:
    """Build an instance from a row of all concrete columns, converted as the ORM converts."""
    values = list(row)
    for i, col, funcs in _converters(model, connection.vendor):
        for convert in funcs:
            values[i] = convert(values[i], col, connection)
    return model.from_db(connection.alias, [f.attname for f in model._meta.concrete_fields], values)


def prediction_insert(prediction: Prediction) -> Prediction:
    """INSERT a new prediction (what `save()` does for a new row, without building it) and return
    it, now stored."""
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(Prediction, connection.vendor, 1), _row_params([prediction]))
    prediction._state.adding = False
    prediction._state.db = connection.alias
    return prediction


def prediction_claim(prediction_id: str, worker_name: str) -> tuple[Prediction, Any] | None:
    """Mark an active prediction running (one more attempt) and return it with its chatflow's
    stamp (its updated_at as the driver gives it, which changes with every save, None if it is
    gone), or return None if it is not active any more. One statement."""
    params = [
        PredictionStatus.RUNNING.value,
        _value(Prediction, "started_at", timezone.now()),
        worker_name,
        _pk(Prediction, prediction_id),
        *(s.value for s in ACTIVE_STATUSES),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None
    return _from_row(Prediction, row[:-1]), row[-1]  # type: ignore[return-value]


@functools.cache
def _claim_sql(vendor: str) -> str:
    columns = ", ".join(
        connection.ops.quote_name(f.column) for f in Prediction._meta.concrete_fields
    )
    status = _column(Prediction, "status")
    attempts = _column(Prediction, "attempts")
    stamp = (
        f"SELECT {_column(Chatflow, 'updated_at')} FROM {_table(Chatflow)}"
        f" WHERE {_table(Chatflow)}.{_column(Chatflow, 'id')}"
        f" = {_table(Prediction)}.{_column(Prediction, 'chatflow')}"
    )
    return (
        f"UPDATE {_table(Prediction)} SET {status} = %s, {_column(Prediction, 'started_at')} = %s,"
        f" {attempts} = {attempts} + 1, {_column(Prediction, 'worker_name')} = %s"
        f" WHERE {_column(Prediction, 'id')} = %s AND {status} IN (%s, %s)"
        f" RETURNING {columns}, ({stamp})"
    )


def history(chatflow_id: uuid.UUID, session_id: str, limit: int) -> list[tuple[str, str]]:
    """Return the last `limit` (role, content) pairs of a session, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            _history_sql(connection.vendor), [_pk(Chatflow, chatflow_id), session_id, limit]
        )
        rows = cursor.fetchall()
    rows.reverse()
    return [(role, content) for role, content in rows]


@functools.cache
def _history_sql(vendor: str) -> str:
    return (
        f"SELECT {_column(ChatMessage, 'role')}, {_column(ChatMessage, 'content')}"
        f" FROM {_table(ChatMessage)}"
        f" WHERE {_column(ChatMessage, 'chatflow')} = %s AND {_column(ChatMessage, 'session_id')}"
        f" = %s ORDER BY {_column(ChatMessage, 'created_at')} DESC LIMIT %s"
    )


def prediction_succeed(prediction_id: uuid.UUID, result: dict[str, Any]) -> bool:
    """Record a running prediction's answer; False if it is not running any more."""
    with connection.cursor() as cursor:
        cursor.execute(_succeed_sql(connection.vendor), _succeed_params(prediction_id, result))
        return cursor.rowcount > 0


def _succeed_params(prediction_id: uuid.UUID, result: dict[str, Any]) -> list[Any]:
    return [
        PredictionStatus.SUCCEEDED.value,
        _value(Prediction, "result", result),
        _value(Prediction, "finished_at", timezone.now()),
        _pk(Prediction, prediction_id),
        PredictionStatus.RUNNING.value,
    ]


@functools.cache
def _succeed_sql(vendor: str) -> str:
    status = _column(Prediction, "status")
    return (
        f"UPDATE {_table(Prediction)} SET {status} = %s, {_column(Prediction, 'result')} = %s,"
        f" {_column(Prediction, 'finished_at')} = %s"
        f" WHERE {_column(Prediction, 'id')} = %s AND {status} = %s"
    )


def prediction_succeed_with_messages(
    prediction_id: uuid.UUID, result: dict[str, Any], messages: Sequence[ChatMessage]
) -> bool:
    """Record a running prediction's answer and insert its chat messages, both or neither;
    False if it is not running any more. On PostgreSQL one statement, so no BEGIN and COMMIT
    around it (two round trips); elsewhere the two statements in one transaction."""
    if connection.vendor != "postgresql":
        with transaction.atomic():
            if not prediction_succeed(prediction_id, result):
                return False
            messages_insert(messages)
            return True
    params = [*_succeed_params(prediction_id, result), *_row_params(messages)]
    with connection.cursor() as cursor:
        cursor.execute(_succeed_with_messages_sql(connection.vendor, len(messages)), params)
        return cursor.rowcount > 0


@functools.cache
def _succeed_with_messages_sql(vendor: str, rows: int) -> str:
    fields = ChatMessage._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    # Typed: VALUES outside an INSERT would take untyped parameters for text.
    row = "(" + ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in fields) + ")"
    return (
        f"WITH succeeded AS ({_succeed_sql(vendor)} RETURNING 1)"
        f" INSERT INTO {_table(ChatMessage)} ({columns})"
        f" SELECT * FROM (VALUES {', '.join([row] * rows)}) AS messages"
        f" WHERE EXISTS (SELECT 1 FROM succeeded)"
    )


def messages_insert(messages: Sequence[ChatMessage]) -> None:
    """Insert chat messages in one statement (what bulk_create does, without building it)."""
    sql = _insert_sql(ChatMessage, connection.vendor, len(messages))
    with connection.cursor() as cursor:
        cursor.execute(sql, _row_params(messages))


def _row_params(objs: Sequence[Model]) -> list[Any]:
    """The values of new rows, every concrete field in order, as `save()` would store them."""
    fields = type(objs[0])._meta.concrete_fields
    return [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]


@functools.cache
def _insert_sql(model: type[Model], vendor: str, rows: int) -> str:
    fields = model._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return f"INSERT INTO {_table(model)} ({columns}) VALUES " + ", ".join([row] * rows)
