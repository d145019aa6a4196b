"""Formatting for the queue dashboard templates: durations, rates, list URLs."""

from __future__ import annotations

from urllib.parse import urlencode

from django import template
from django.urls import reverse

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """Format seconds as `850 ms`, `12.3 s`, `4 min 05 s` or `2 h 03 min`."""
    if seconds is None or seconds == "":
        return "\u2013"
    seconds = float(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def percent(rate: float | None) -> str:
    return "\u2013" if rate is None else f"{rate * 100:.1f} %"


@register.simple_tag
def job_list_url(queue: str, state: str, page: int | None = None, filters=None) -> str:
    """URL of a job list page, keeping the filters."""
    url = reverse("queueadmin:queueadmin_job_list", args=[queue, state])
    params: dict[str, object] = {}
    if filters is not None:
        params.update(
            {
                key: value
                for key, value in (
                    ("chatflow", filters.chatflow),
                    ("chat_id", filters.chat_id),
                    ("prediction", filters.prediction_id),
                )
                if value
            }
        )
    if page and page > 1:
        params["page"] = page
    return f"{url}?{urlencode(params)}" if params else url
