"""The service's job store: one SQLite database (the standard library's sqlite3) in the state dir.

Durable by construction: WAL journal, synchronous=FULL, and every state change is one
transaction, committed before anyone is told (the client gets its id only after its row is
committed; a job is 'completed' only after its files are renamed into place). A server killed at
any moment restarts into a consistent queue: rows left 'in_progress' go back to 'queued' (outputs
are a pure function of image, seed and settings, so a re-run gives the same bytes), in their
original order.

Statuses: queued -> in_progress -> completed | failed; in_progress -> queued again when the
workers crashed with the job in flight (after MAX_CRASHES such crashes the job fails instead: a
job that kills the pipeline every time must not take the service down for ever). A deleted job's
row is removed.

One connection, shared by the HTTP handlers (in a thread pool), the feeder and the monitor;
a lock makes each method one transaction at a time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("queued", "in_progress", "completed", "failed")
MAX_CRASHES = 3
"""A job in flight during this many crashes of the workers fails (poison job), rather than run again."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id TEXT NOT NULL UNIQUE,                -- 'video_' + 32 hex digits, made by the server
    status TEXT NOT NULL,                   -- queued | in_progress | completed | failed
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    params TEXT NOT NULL,                   -- JSON: the request as validated (prompt, seed, conditioning)
    image TEXT NOT NULL,                    -- file name under uploads/
    outputs TEXT,                           -- JSON: files under outputs/ once completed
    timings TEXT,                           -- JSON: when the stages took, prepared and wrote it
    error_code TEXT,
    error_message TEXT,
    crashes INTEGER NOT NULL DEFAULT 0      -- worker crashes it was in flight for
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    status: str
    created_at: float
    started_at: float | None
    completed_at: float | None
    params: dict[str, Any]
    image: str
    outputs: dict[str, Any] | None
    timings: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    crashes: int

    @staticmethod
    def from_row(row: sqlite3.Row) -> Job:
        return Job(
            seq=row["seq"],
            id=row["id"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            params=json.loads(row["params"]),
            image=row["image"],
            outputs=json.loads(row["outputs"]) if row["outputs"] else None,
            timings=json.loads(row["timings"]) if row["timings"] else None,
            error_code=row["error_code"],
            error_message=row["error_message"],
            crashes=row["crashes"],
        )


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # isolation_level=None: no implicit transactions; each method says BEGIN IMMEDIATE itself.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self.changes = 0
        """Transactions committed since it opened: a reader (the page's event stream) sees that a job moved."""
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives a power loss, not only a kill
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(f"{self.path}: job store schema {version}, this ppsvd knows {SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self, statements: Iterable[tuple[str, tuple]]) -> list[int]:
        """Run the statements as one transaction; returns each one's rowcount."""
        counts = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                counts.append(self._db.execute(sql, args).rowcount)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.changes += 1
        return counts

    # -- the API's side ------------------------------------------------------------------------
    def add(self, job_id: str, params: dict[str, Any], image: str, created_at: float | None = None) -> Job:
        """A new queued job, committed (durable) when this returns."""
        with self._lock:
            self._transaction(
                [
                    (
                        "INSERT INTO jobs (id, status, created_at, params, image) VALUES (?, 'queued', ?, ?, ?)",
                        (job_id, time.time() if created_at is None else created_at, json.dumps(params), image),
                    )
                ]
            )
            return self._get(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._get(job_id)

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row is not None else None

    def page(self, *, after: str | None, limit: int, order: str) -> tuple[list[Job], bool] | None:
        """Up to `limit` jobs after the job `after` (by creation), oldest first ('asc') or newest
        first ('desc'), and whether more follow; None when `after` is no job's id."""
        with self._lock:
            bound = None
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None:
                    return None
                bound = row["seq"]
            op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
            where = f"WHERE seq {op} ?" if bound is not None else ""
            args = (bound, limit + 1) if bound is not None else (limit + 1,)
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY seq {direction} LIMIT ?", args).fetchall()
        jobs = [Job.from_row(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def count(self, status: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Jobs by status (statuses with none left out)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            return {status: n for status, n in rows}

    def queue_position(self, job: Job) -> int:
        """0 for the next job to start."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?", (job.seq,)
            ).fetchone()[0]

    def delete(self, job_id: str) -> Job | None:
        """Remove the job; returns it as it was (None if there was none)."""
        with self._lock:
            job = self._get(job_id)
            if job is not None:
                self._transaction([("DELETE FROM jobs WHERE id = ?", (job_id,))])
            return job

    # -- the pipeline's side ---------------------------------------------------------------------
    def claim_next(self) -> Job | None:
        """The oldest queued job, now in_progress (one transaction), or None when none is queued."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            self._transaction(
                [("UPDATE jobs SET status = 'in_progress', started_at = ? WHERE id = ?", (time.time(), row["id"]))]
            )
            return self._get(row["id"])

    def complete(self, job_id: str, outputs: dict[str, Any], timings: dict[str, Any]) -> bool:
        """in_progress -> completed (its files are in place). False when the job is not in flight
        (deleted, or already completed: a re-run after a crash never completes a job twice)."""
        with self._lock:
            (changed,) = self._transaction(
                [
                    (
                        "UPDATE jobs SET status = 'completed', completed_at = ?, outputs = ?, timings = ? "
                        "WHERE id = ? AND status = 'in_progress'",
                        (time.time(), json.dumps(outputs), json.dumps(timings), job_id),
                    )
                ]
            )
            return changed == 1

    def fail(self, job_id: str, code: str, message: str) -> bool:
        with self._lock:
            (changed,) = self._transaction(
                [
                    (
                        "UPDATE jobs SET status = 'failed', completed_at = ?, error_code = ?, error_message = ? "
                        "WHERE id = ? AND status IN ('queued', 'in_progress')",
                        (time.time(), code, message, job_id),
                    )
                ]
            )
            return changed == 1

    def requeue(self, job_ids: Iterable[str], *, crash: str | None) -> tuple[list[str], list[str]]:
        """Jobs that were in flight when the workers stopped go back to the queue, in one transaction.
        crash: the workers crashed (the reason): each job's crash count grows, and a job at
        MAX_CRASHES fails with that reason instead. Returns (requeued ids, failed ids)."""
        ids = list(job_ids)
        requeued, failed = [], []
        with self._lock:
            statements = []
            for job_id in ids:
                job = self._get(job_id)
                if job is None or job.status != "in_progress":
                    continue
                crashes = job.crashes + (1 if crash is not None else 0)
                if crash is not None and crashes >= MAX_CRASHES:
                    message = f"the pipeline failed {crashes} times while running this job; the last time: {crash}"
                    statements.append(
                        (
                            "UPDATE jobs SET status = 'failed', crashes = ?, completed_at = ?, error_code = ?, "
                            "error_message = ? WHERE id = ?",
                            (crashes, time.time(), "pipeline_failed", message, job_id),
                        )
                    )
                    failed.append(job_id)
                else:
                    statements.append(
                        (
                            "UPDATE jobs SET status = 'queued', crashes = ?, started_at = NULL WHERE id = ?",
                            (crashes, job_id),
                        )
                    )
                    requeued.append(job_id)
            if statements:
                self._transaction(statements)
        return requeued, failed

    def recover(self) -> int:
        """At start: jobs a killed server left in_progress are queued again (not a crash of theirs)."""
        with self._lock:
            (changed,) = self._transaction(
                [("UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'in_progress'", ())]
            )
            return changed

    def ids_with_status(self, *statuses: str) -> set[str]:
        with self._lock:
            marks = ",".join("?" * len(statuses))
            rows = self._db.execute(f"SELECT id FROM jobs WHERE status IN ({marks})", statuses).fetchall()
            return {r["id"] for r in rows}

    def all_ids(self) -> set[str]:
        with self._lock:
            return {r["id"] for r in self._db.execute("SELECT id FROM jobs").fetchall()}
