"""Formatting filters and the list URL tag of the queue dashboard."""

from __future__ import annotations

import pytest

from queueadmin.selectors import JobFilter
from queueadmin.templatetags.queueadmin_tags import duration, job_list_url, percent


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "\u2013"),
        (0.25, "250 ms"),
        (12.34, "12.3 s"),
        (245, "4 min 05 s"),
        (7380, "2 h 03 min"),
    ],
)
def test_duration_formats_seconds_for_people(seconds, shown):
    assert duration(seconds) == shown


def test_percent_formats_a_rate_or_a_dash():
    assert percent(0.5) == "50.0 %"
    assert percent(None) == "\u2013"


def test_job_list_url_keeps_filters_and_page():
    filters = JobFilter(chatflow="support", chat_id="c 1", prediction_id="")
    url = job_list_url("flowsite-queue", "failed", 3, filters)
    assert url == "/admin/queues/queue/flowsite-queue/failed/?chatflow=support&chat_id=c+1&page=3"
    assert job_list_url("q", "waiting") == "/admin/queues/queue/q/waiting/"
