"""Where an evaluation's time goes: seconds per step, kept in <work>/phases.json.

A step adds the seconds it actually ran, so a resumed evaluation still reports the steps it skipped
as they were measured, and a step interrupted and resumed reports its parts added up. A simulation
step also names the buyers it covers, for buyers per minute.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PHASES_FILE = "phases.json"


@dataclass
class PhaseTimes:
    path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    buyers: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, work: Path) -> PhaseTimes:
        path = work / PHASES_FILE
        if not path.is_file():
            return cls(path)
        record = json.loads(path.read_text())
        return cls(path, record.get("seconds", {}), record.get("buyers", {}))

    @contextmanager
    def phase(self, name: str, buyers: int | None = None):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            if buyers is not None:
                self.buyers[name] = buyers
            self.path.write_text(json.dumps(self.summary(), indent=1) + "\n")

    def summary(self) -> dict:
        return phase_summary(self.seconds, self.buyers)


def phase_summary(seconds: dict[str, float], buyers: dict[str, int]) -> dict:
    """Seconds per phase, their total, and buyers per minute of each simulation phase."""
    return {
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 1),
        "buyers": dict(buyers),
        "buyers_per_minute": {name: round(60 * count / seconds[name], 1)
                              for name, count in buyers.items() if seconds.get(name)},
    }


def pooled_phases(records: list[dict]) -> dict:
    """The phase times of several folds added up."""
    seconds: dict[str, float] = {}
    buyers: dict[str, int] = {}
    for record in records:
        for name, value in record.get("seconds", {}).items():
            seconds[name] = seconds.get(name, 0.0) + value
        for name, count in record.get("buyers", {}).items():
            buyers[name] = buyers.get(name, 0) + count
    return phase_summary(seconds, buyers)
