"""The run directory runs/<run_id>/ (DESIGN.md, "File formats").

    manifest.json       how the run was made: command, config, seeds, versions, store, git revision
    trajectories.jsonl  one line per finished synthetic buyer, appended, flushed and fsynced as
                        each buyer finishes, so a crash loses at most the buyers in flight
    summary.json        conversion overall and per type, written at the end of the run

    trajectories.rejected.jsonl
                        lines a resume found damaged (torn by a crash, NUL bytes or garbage left
                        by a power cut), each with its line number and the reason

Resuming first repairs trajectories.jsonl (repair_trajectories): damaged lines move to
trajectories.rejected.jsonl, every valid line stays. A buyer may then have several lines: a resume
reruns buyers whose record ended in an infrastructure error and appends the new record, which
supersedes the old one; readers take the last line per buyer_index (latest_per_buyer).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

MANIFEST_FILE = "manifest.json"
TRAJECTORIES_FILE = "trajectories.jsonl"
SUMMARY_FILE = "summary.json"
REJECTED_FILE = "trajectories.rejected.jsonl"

# Config keys that decide which buyers a run has and what they do; a resumed run must match them.
# The store URL and the driver may change (a mock store restarts on another port; both drivers
# read the same pages), and each resume is noted in the manifest.
RESUME_KEYS = ("shop", "codebook_dir", "policy", "buyers", "max_steps", "seed")
_VERSIONED_PACKAGES = ("simpersona", "playwright", "httpx", "starlette", "uvicorn", "numpy", "torch", "transformers")


def same_policy(recorded: dict, current: dict) -> bool:
    """Whether two manifests' policy records (harness.sim.policies.policy_record) name the same
    policy. A record that names no weights is compared without them: manifests written before
    the weights were recorded stay resumable."""
    if "weights" not in recorded:
        current = {key: value for key, value in current.items() if key != "weights"}
    return recorded == current


class RunDirError(RuntimeError):
    """The run directory cannot be created or resumed as asked."""


class RunDir:
    """One run's directory; create it with RunDir.open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rejected_this_session: list[dict] = []  # lines repair_trajectories moved out

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def trajectories_path(self) -> Path:
        return self.path / TRAJECTORIES_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def rejected_path(self) -> Path:
        return self.path / REJECTED_FILE

    @classmethod
    def open(cls, path: str | Path, manifest: dict, resume: bool = False) -> "RunDir":
        """Start a new run at path, or with resume=True continue the one there.

        A new run refuses a directory that already holds trajectories (nothing is overwritten); a
        resumed run refuses a manifest whose population or policy differs from this one's.
        """
        run = cls(Path(path))
        if resume and run.manifest_path.is_file():
            original = json.loads(run.manifest_path.read_text())
            run._check_resumable(original, manifest)
            run.repair_trajectories()
            # The original manifest stays as it was; each resume adds what it ran with.
            original.setdefault("resumes", []).append({k: v for k, v in manifest.items() if k != "seeds"})
            manifest = original
        elif run.trajectories_path.exists() and run.trajectories_path.stat().st_size > 0:
            raise RunDirError(f"{run.path} already holds a run; pass resume to continue it or choose another run id")
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_json(run.manifest_path, manifest)
        run.trajectories_path.touch()
        return run

    def _check_resumable(self, original: dict, manifest: dict) -> None:
        previous = original.get("config", {})
        current = manifest.get("config", {})
        differing = [key for key in RESUME_KEYS if key in previous and previous.get(key) != current.get(key)]
        if differing:
            details = "; ".join(f"{k}: was {previous.get(k)!r}, now {current.get(k)!r}" for k in differing)
            raise RunDirError(f"cannot resume {self.path}: the run was made with other settings ({details})")
        recorded, resuming_with = original.get("policy"), manifest.get("policy")
        if recorded is not None and resuming_with is not None and not same_policy(recorded, resuming_with):
            raise RunDirError(f"cannot resume {self.path}: it was made by the policy {recorded!r}, not by {resuming_with!r} "
                              "(a retrained agent or another temperature makes other buyers; start a new run)")

    def repair_trajectories(self) -> list[dict]:
        """Make trajectories.jsonl hold only whole records again, after a crash or power loss.

        A torn last line (the write was cut off) and any bad line in the middle (garbage, NUL
        bytes a file system left after a power cut, JSON that is no trajectory record) are moved
        to trajectories.rejected.jsonl with their line number and the reason; every valid line
        stays, in its order. Their buyers then have no record, so a resume runs them again.
        Returns the rejected entries (empty when the file was sound).
        """
        path = self.trajectories_path
        if not path.exists():
            return []
        data = path.read_bytes()
        pieces = data.split(b"\n")
        kept: list[bytes] = []
        rejected: list[dict] = []
        for number, raw in enumerate(pieces, start=1):
            last = number == len(pieces)
            if not raw.strip():
                continue
            problem = line_problem(raw)
            if problem is None:
                kept.append(raw)
                continue
            # NULs stand where a power cut lost data, possibly over a newline: whole records on
            # either side of them are still good.
            inside = [part for part in re.split(rb"\x00+", raw) if part.strip() and line_problem(part) is None]
            kept.extend(inside)
            if inside:
                problem += f"; {len(inside)} whole record(s) in it kept"
            if last:
                problem = f"torn last line, the write was cut off ({problem})"
            rejected.append({"line": number, "reason": problem, "bytes": len(raw),
                             "text": raw.decode("utf-8", errors="backslashreplace")})
        repaired = b"".join(line + b"\n" for line in kept)
        if repaired == data:
            return []
        found = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # Rejected lines go to disk first: a crash during the repair may duplicate one, never lose one.
        if rejected:
            with open(self.rejected_path, "a", encoding="utf-8") as handle:
                for entry in rejected:
                    handle.write(json.dumps({**entry, "found_utc": found}, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        partial = path.with_suffix(path.suffix + ".partial")
        with open(partial, "wb") as handle:
            handle.write(repaired)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        _fsync_directory(self.path)
        self.rejected_this_session.extend(rejected)
        return rejected

    def read_trajectories(self) -> list[dict]:
        """Every line of trajectories.jsonl, in order (a torn last line is skipped).

        A buyer may have several lines (a resume reruns buyers that ended in error and appends
        their new record): take `latest_records(...)` for one record per buyer.
        """
        if not self.trajectories_path.exists():
            return []
        records = []
        pieces = self.trajectories_path.read_bytes().split(b"\n")
        for number, raw in enumerate(pieces, start=1):
            if not raw.strip():
                continue
            problem = line_problem(raw)
            if problem is None:
                records.append(json.loads(raw))
            elif number < len(pieces):  # a torn last line is a buyer that was in flight
                raise RunDirError(
                    f"{self.trajectories_path}: line {number} is {problem}; "
                    "resume the run to move bad lines to trajectories.rejected.jsonl and rerun their buyers"
                )
        return records

    def latest_records(self) -> list[dict]:
        """One record per buyer: the last line written for it."""
        return latest_per_buyer(self.read_trajectories())

    def completed_buyers(self) -> set[int]:
        """Buyers with a record, whatever its outcome."""
        return {record["buyer_index"] for record in self.read_trajectories()}

    def append_trajectory(self, record: dict) -> None:
        """Append one buyer's record and force it to disk before returning."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with open(self.trajectories_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def write_summary(self, summary: dict) -> None:
        self.write_json(self.summary_path, summary)

    @staticmethod
    def write_json(path: Path, payload: dict) -> None:
        # Write then rename, so a reader never sees half a file.
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
        os.replace(partial, path)


def line_problem(raw: bytes) -> str | None:
    """Why one line of trajectories.jsonl is not a trajectory record; None when it is one."""
    if b"\x00" in raw:
        return "NUL bytes (data lost in a power cut)"
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error})"
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    index = record.get("buyer_index")
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(record.get("outcome"), str):
        return "not a trajectory record (needs an integer buyer_index and an outcome)"
    return None


def latest_per_buyer(records: list[dict]) -> list[dict]:
    """The last record of each buyer_index (a later line supersedes an earlier one)."""
    latest: dict[int, dict] = {}
    for record in records:
        latest[record["buyer_index"]] = record
    return list(latest.values())


def _fsync_directory(path: Path) -> None:
    """Make a rename inside `path` durable."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def git_revision(repo_dir: Path | None = None) -> str | None:
    """HEAD's commit, with '+dirty' when the working tree has changes; None outside git."""
    cwd = repo_dir or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
