"""Wall-clock budgets of a training invocation, as pure functions of measured timings.

Two uses: a *stretch* of a long campaign (``--max-minutes``: train until the next iteration and
the final save would no longer fit, then save the full state and stop; the schedule is
untouched, the next stretch continues it), and a *fitted* run (``--fit-schedule``: one call of a
lent GPU machine, where the poly schedule itself is shortened so that it ends inside the budget).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RateMeter:
    """Seconds per iteration since a reference point, leaving out the first iteration(s) of an
    invocation (cuDNN autotuning and allocator warm-up made the first H200 step take 51 s)."""

    skip: int = 1
    _start: tuple[float, int] | None = None
    _seen: int = 0

    def observe(self, now: float, iteration: int) -> None:
        self._seen += 1
        if self._seen == self.skip:
            self._start = (now, iteration)

    def seconds_per_iteration(self, now: float, iteration: int) -> float | None:
        if self._start is None or iteration <= self._start[1]:
            return None
        return (now - self._start[0]) / (iteration - self._start[1])


def stretch_should_stop(
    elapsed_s: float, budget_s: float, seconds_per_iteration: float | None, reserve_s: float
) -> bool:
    """Stop before the iteration that would leave less than ``reserve_s`` (the final save, an
    evaluation) inside ``budget_s``. Without a rate yet, only an exhausted budget stops."""
    step = seconds_per_iteration or 0.0
    return elapsed_s + step + reserve_s > budget_s


def fitted_total(
    iteration: int,
    total: int,
    seconds_per_iteration: float,
    seconds_left: float,
    reserve_s: float,
) -> int:
    """The total iteration count that ends a schedule inside ``seconds_left`` (keeping
    ``reserve_s`` for the final evaluation and saves): never longer than ``total``, never
    before ``iteration`` (which means: end now)."""
    if seconds_per_iteration <= 0:
        return total
    more = int(max(0.0, seconds_left - reserve_s) / seconds_per_iteration)
    return max(iteration, min(total, iteration + more))
