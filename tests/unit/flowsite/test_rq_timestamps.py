"""flowsite.runtime.speed_up_rq_timestamps: rq's timestamps without strptime and strftime, with
the same values as rq's own functions."""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import rq.job
import rq.registry
from rq import utils
from rq.job import Job

from flowsite.runtime import speed_up_rq_timestamps
from predictions.worker import bookkeeping
from queueadmin import services as queueadmin_services

MOMENTS = [
    datetime(2026, 12, 7, 23, 50, 52, 696562, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2028, 2, 29, 0, 0, 0, 0, tzinfo=UTC),  # no microseconds: still six digits
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=None),  # noqa: DTZ001  naive, as some callers pass
    datetime(2026, 6, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),  # written as is
    datetime(1000, 1, 1, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),  # strftime's own way, kept
]


def test_installed_in_every_loaded_module_that_uses_them():
    assert all(f.fast for f in (utils.utcparse, utils.utcformat, utils.current_timestamp))
    for module in (rq.job, rq.registry, bookkeeping, queueadmin_services):
        for name in ("utcparse", "utcformat", "current_timestamp"):
            held = getattr(module, name, None)
            assert held is None or held is getattr(utils, name), (module.__name__, name)
    originals = {utils.utcparse.original, utils.utcformat.original}
    originals.add(utils.current_timestamp.original)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("rq", "django_rq", "predictions", "queueadmin"):
            held = vars(module).values()
            assert not [value for value in held if any(value is o for o in originals)], name


def test_installing_again_changes_nothing():
    parse = utils.utcparse
    speed_up_rq_timestamps()
    assert utils.utcparse is parse


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_formatted_and_parsed_as_rq_does(moment):
    text = utils.utcformat(moment)
    assert text == utils.utcformat.original(moment)

    if moment.year < 1000:
        return  # rq's parser cannot read what its formatter wrote
    parsed = utils.utcparse(text)
    expected = utils.utcparse.original(text)
    assert parsed == expected
    assert parsed.tzinfo is expected.tzinfo is UTC
    assert (parsed.year, parsed.microsecond) == (expected.year, expected.microsecond)


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-07T23:50:52Z",  # rq's older form, without microseconds
        "2026-12-07 23:50:52.696562Z",  # not rq's: a space
        "2026-12-07T23:50:52.696562+00:00",
        "2026-02-30T23:50:52.696562Z",
        "",
        "yesterday at noon, roughly",
    ],
)
def test_other_strings_are_read_by_rqs_parser(text):
    try:
        expected = utils.utcparse.original(text)
    except ValueError as refused:
        with pytest.raises(ValueError, match=re.escape(str(refused))):
            utils.utcparse(text)
    else:
        assert utils.utcparse(text) == expected


def test_current_timestamp_is_the_whole_second():
    before = int(time.time())
    got = utils.current_timestamp()
    rq_own = utils.current_timestamp.original()
    assert before <= got <= rq_own <= int(time.time())
    assert isinstance(got, int)


def test_a_job_keeps_its_times_through_redis(redis_db):
    job = Job.create(func="predictions.jobs.prediction_run_job", connection=redis_db)
    job.enqueued_at = utils.now()
    job.save()

    fetched = Job.fetch(job.id, connection=redis_db)

    assert fetched.created_at == job.created_at
    assert fetched.enqueued_at == job.enqueued_at
    assert fetched.enqueued_at.tzinfo is UTC
