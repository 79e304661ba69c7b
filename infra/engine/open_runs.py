"""The index of unfinished runs, by partition: ``open.<partition>.<run>`` in ``OPEN_RUNS``.

One empty message per unfinished run (at most one per subject), published when
the run's first record is stored and purged when it ends. A new owner of a
partition lists the subjects under ``open.<partition>.*`` and brings up just
those runs: the cost of a takeover or a start grows with the runs in flight,
not with the runs that ever finished. A purge leaves no marker behind (a KV
delete would, and a listing would read them all).

Like the snapshot it rides along with, the entry is written without holding up
the run: a crash in between leaves a run out of the index until its actor is
next brought up. Such a run still moves on with every fact its inbox gets;
only the re-issue of a task lost behind the engine's back waits for that.
"""

from __future__ import annotations

import json

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from dagnats.domain.partition import partition_of
from dagnats.domain.state import WorkflowRun

from ..wire.names import OPEN_RUNS_STREAM

PAGE = 100_000  # subjects per stream-info answer (the server's own page)


def open_subject(run_id: str, partitions: int) -> str:
    return f"open.{partition_of(run_id, partitions)}.{run_id}"


class OpenRuns:
    def __init__(self, nc: NATS, js: JetStreamContext, partitions: int) -> None:
        self.nc, self.js, self.partitions = nc, js, partitions

    async def mark(self, run: WorkflowRun) -> None:
        """Index an unfinished run; take a finished one out."""
        subject = open_subject(run.run_id, self.partitions)
        if run.is_terminal:
            await self.js.purge_stream(OPEN_RUNS_STREAM, subject=subject)
        else:
            await self.js.publish(subject, b"", stream=OPEN_RUNS_STREAM)

    async def listed(self, partition: int) -> list[str]:
        """The unfinished runs of ``partition`` (page by page: a stream-info answer is bounded)."""
        runs: list[str] = []
        offset = 0
        while True:
            request = {"subjects_filter": f"open.{partition}.*", "offset": offset}
            reply = await self.nc.request(
                f"$JS.API.STREAM.INFO.{OPEN_RUNS_STREAM}", json.dumps(request).encode(), timeout=10
            )
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RuntimeError(f"listing open runs of partition {partition}: {answer['error']}")
            subjects = (answer.get("state") or {}).get("subjects") or {}
            runs += [subject.split(".", 2)[2] for subject in subjects]
            total = answer.get("total", len(subjects))
            offset += len(subjects)
            if not subjects or offset >= total:
                return runs
