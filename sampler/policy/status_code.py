"""`status_code`: samples traces with at least one span whose status is in `status_codes`."""

from __future__ import annotations

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import StatusCodeConfig
from sampler.policy.summary import STATUS_ERROR, STATUS_OK, STATUS_UNSET, TraceSummary

_BITS = {"UNSET": STATUS_UNSET, "OK": STATUS_OK, "ERROR": STATUS_ERROR}


class StatusCode(Policy):
    def __init__(self, name: str, config: StatusCodeConfig) -> None:
        super().__init__(name)
        self.mask = 0
        for code in config.status_codes:
            self.mask |= _BITS[code]

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if trace.status_mask & self.mask else Vote.NOT_SAMPLED
