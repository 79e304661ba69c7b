"""The reactive engine (``infra.reactive.serve``, as ``dagnats reactive serve`` runs it) with
a clock the test sets: ``python reactive_fake_clock.py FILE.py CLOCK_FILE``, where CLOCK_FILE
holds the engine's "now" (RFC3339). Cooldowns and deadlines then move only when the test
writes the file, so a test asserts on them without reading the wall clock."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from dagnats.infra.reactive.serve import serve


def main() -> None:
    workflows, clock_file = sys.argv[1], Path(sys.argv[2])
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(workflows, clock=lambda: clock_file.read_text().strip()))


if __name__ == "__main__":
    main()
