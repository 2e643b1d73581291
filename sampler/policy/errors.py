"""`errors` (tailsampler's own): samples traces with any span whose status is ERROR, or whose HTTP
response status is at least `http_status_min` (`http.response.status_code`, or the older
`http.status_code`; integers, or strings of digits as some SDKs send them), or any log record held
with the trace whose severity_number is at least `log_severity_min` (17, ERROR; null: logs ignored)."""

from __future__ import annotations

from collections.abc import Mapping

from sampler.otlp.wire import AttrValue
from sampler.policy.base import Policy, Vote
from sampler.policy.configs import ErrorsConfig
from sampler.policy.summary import STATUS_ERROR, TraceSummary

HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")


class Errors(Policy):
    def __init__(self, name: str, config: ErrorsConfig) -> None:
        super().__init__(name)
        self.keys = frozenset(HTTP_STATUS_KEYS)
        self.minimum = config.http_status_min
        self.log_minimum = config.log_severity_min

    def matches(self, attrs: Mapping[str, AttrValue], is_resource: bool) -> bool:
        if is_resource:
            return False
        for key in HTTP_STATUS_KEYS:
            value = attrs.get(key)
            if value is None:
                continue
            if type(value) is int:  # the common case, checked first: this runs for every span
                if value >= self.minimum:
                    return True
            elif isinstance(value, str) and value.isdigit() and int(value) >= self.minimum:
                return True
        return False

    def evaluate(self, trace: TraceSummary) -> Vote:
        hit = (trace.status_mask & STATUS_ERROR or self.matched(trace)
               or (self.log_minimum is not None and trace.log_records and trace.log_severity_max >= self.log_minimum))
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED
