"""Replayed training buyers kept for every fold, seed and protocol of one evaluation.

A buyer's replay depends on its events, its shop's catalog, the store layout, the replay's step
budget and its buyer tag (which names the buyer), never on the fold's codebook. The folds of a
seed draw their trace buyers by a key fixed per buyer (evaluate.select_trace_buyers), so most of a
fold's buyers were replayed by an earlier fold already: each buyer is replayed once, and every fold
gives the trace its own code for that buyer.

    <evaluation dir>/replays/traces.jsonl   one trace per (shop, buyer), rewritten whole after each
                                            replay (a crash keeps the file as it was)
    <evaluation dir>/replays/settings.json  what the replays depend on; another evaluation's
                                            settings are refused, naming the one that differs
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from agent.traces import Trace, read_traces

TRACES_FILE = "traces.jsonl"
SETTINGS_FILE = "settings.json"


class SharedReplaysError(ValueError):
    """The kept replays were made under other settings than this evaluation's."""


def replay_settings(events: Path, catalog: Path, variant: str, max_steps: int) -> dict:
    """Everything a kept replay depends on besides its buyer."""
    return {"events_sha1": file_digest(events), "catalog_sha1": file_digest(catalog), "variant": variant,
            "max_steps_per_buyer": max_steps}


def file_digest(path: Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


class SharedReplays:
    """The traces kept in `folder`, by (shop, buyer); refused when made under other `settings`."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        self.settings = settings
        settings_path = self.folder / SETTINGS_FILE
        if settings_path.is_file():
            self._check(json.loads(settings_path.read_text()))
        traces_path = self.folder / TRACES_FILE
        self.traces = {(t.shop_id, t.buyer_id): t for t in read_traces(traces_path)} if traces_path.is_file() else {}

    def _check(self, kept: dict) -> None:
        for name, value in self.settings.items():
            if kept.get(name) != value:
                raise SharedReplaysError(
                    f"{self.folder} holds replays made with {name} = {kept.get(name)!r}, this evaluation's is "
                    f"{value!r}; move that folder away to replay the buyers again")

    def missing(self, chosen: pd.DataFrame) -> pd.DataFrame:
        """The chosen buyers (shop_id, buyer_id, code rows) that were never replayed."""
        never = [(str(s), str(b)) not in self.traces for s, b in chosen[["shop_id", "buyer_id"]].itertuples(index=False)]
        return chosen[never]

    def add(self, traces: list[Trace]) -> None:
        self.traces.update({(t.shop_id, t.buyer_id): t for t in traces})
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder / SETTINGS_FILE, json.dumps(self.settings, indent=1) + "\n")
        write_atomically(self.folder / TRACES_FILE, "".join(t.to_json() + "\n" for t in self.traces.values()))

    def for_fold(self, chosen: pd.DataFrame) -> list[Trace]:
        """The chosen buyers' traces, each with the fold's code for its buyer (a buyer whose replay
        failed has none: its replay_report.json says why)."""
        return [replace(self.traces[(str(s), str(b))], code=int(c))
                for s, b, c in chosen[["shop_id", "buyer_id", "code"]].itertuples(index=False)
                if (str(s), str(b)) in self.traces]


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
