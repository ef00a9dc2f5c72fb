"""When member failures stop being noise: the rule that ends a run on a systematic failure.

A member whose episode raises or goes non-finite gets the worst fitness and is counted
(`failed_members`); a few of those are tolerated. A generation *fails* when at least
`fraction` of the population failed, or every member of one rank did (a rank with two or
more members: its environment, not its members, is broken). `patience` failed generations
in a row stop the run with the cause; 0 never stops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FailureWatch:
    fraction: float
    patience: int
    streak: int = 0
    first: int = -1

    def observe(self, generation: int, failed: np.ndarray, slices: list) -> str | None:
        """Record generation `generation`'s failed flags (member order) and the members each rank ran
        (`slices[r]`: indices); the cause if the run must stop."""
        failed = np.asarray(failed, dtype=bool)
        n, k = failed.size, int(failed.sum())
        whole = [r for r, sl in enumerate(slices) if len(sl) >= 2 and failed[np.asarray(sl, dtype=np.int64)].all()]
        if k < self.fraction * n and not whole:
            self.streak, self.first = 0, -1
            return None
        if self.streak == 0:
            self.first = generation
        self.streak += 1
        if not self.patience or self.streak < self.patience:
            return None
        if whole:
            what = f"every member on rank {whole[0]} ({len(slices[whole[0]])} of {len(slices[whole[0]])})"
            if len(whole) > 1:
                what += f" and on {len(whole) - 1} other rank(s)"
        else:
            what = f"{k} of {n} members (limit {self.fraction:g} of the population)"
        return (f"systematic failure: {what} failed in each of the last {self.streak} generations "
                f"({self.first}-{generation}); see the member errors above")
