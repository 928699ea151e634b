"""The run directory runs/<run_id>/ (DESIGN.md, "File formats").

    manifest.json       how the run was made: command, config, seeds, versions, store, git revision
    trajectories.jsonl  one line per finished synthetic buyer, appended, flushed and fsynced as
                        each buyer finishes, so a crash loses at most the buyers in flight
    summary.json        conversion overall and per type, written at the end of the run

Resuming reads trajectories.jsonl, takes every complete line as a finished buyer and cuts off a
torn last line (a crash in the middle of a write) before anything new is appended.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

MANIFEST_FILE = "manifest.json"
TRAJECTORIES_FILE = "trajectories.jsonl"
SUMMARY_FILE = "summary.json"

# Config keys that decide which buyers a run has and what they do; a resumed run must match them.
# The store URL and the driver may change (a mock store restarts on another port; both drivers
# read the same pages), and each resume is noted in the manifest.
RESUME_KEYS = ("shop", "codebook_dir", "policy", "buyers", "max_steps", "seed")
_VERSIONED_PACKAGES = ("simpersona", "playwright", "httpx", "starlette", "uvicorn", "numpy", "torch", "transformers")


class RunDirError(RuntimeError):
    """The run directory cannot be created or resumed as asked."""


class RunDir:
    """One run's directory; create it with RunDir.open."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def trajectories_path(self) -> Path:
        return self.path / TRAJECTORIES_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

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

    def repair_trajectories(self) -> int:
        """Cut a torn last line off trajectories.jsonl; return how many bytes were removed."""
        path = self.trajectories_path
        if not path.exists():
            return 0
        data = path.read_bytes()
        keep = len(data)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
        return len(data) - keep

    def read_trajectories(self) -> list[dict]:
        """Every complete record in trajectories.jsonl (a torn last line is skipped)."""
        if not self.trajectories_path.exists():
            return []
        records = []
        lines = self.trajectories_path.read_text().split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):  # torn last line: the buyer was in flight
                    continue
                raise RunDirError(f"{self.trajectories_path}: line {number} is not valid JSON ({exc})") from exc
        return records

    def completed_buyers(self) -> set[int]:
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


def git_revision(repo_dir: Path | None = None) -> str | None:
    """HEAD's commit, with '+dirty' when the working tree has changes; None outside git."""
    cwd = repo_dir or Path(__file__).resolve().parents[1]
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
