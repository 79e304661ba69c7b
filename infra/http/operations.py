"""The control plane, called in-process: the same operations ``Client`` asks for on NATS.

``Operations(plane)("run.get", run_id=...)`` builds the operation's request
Struct (``wire.control``) from keyword fields, runs the ControlPlane's
handler on this loop and returns its JSON value; errors are the same
DagnatsError classes a ``Client`` would raise.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from dagnats.domain.errors import InvalidRequest, Unavailable
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.state import DONE_STEP_STATUSES, TERMINAL_RUN_STATUSES, StepStatus

from ..wire import control as wire
from ..wire.notices import await_run
from ..wire.outage import NATS_UNAVAILABLE

if TYPE_CHECKING:
    from ..engine.control import ControlPlane


class Operations:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    @property
    def nc(self) -> Any:
        return self.plane.nc

    @property
    def js(self) -> Any:
        return self.plane.js

    async def __call__(self, op: str, **fields: Any) -> Any:
        try:
            request = msgspec.convert(fields, wire.OPERATIONS[op])
        except msgspec.ValidationError as err:
            raise InvalidRequest(op, str(err)) from None
        try:
            return await self.plane.handlers[op](request)
        except NATS_UNAVAILABLE as err:
            raise Unavailable(f"NATS did not answer in time ({err.__class__.__name__}); try again") from None

    async def wait(self, run_id: str, step: str | None, timeout: float) -> tuple[bool, dict[str, Any]]:
        """The run's view once it (or ``step``) has finished, or as it is after ``timeout``."""
        check_identifier("run id", run_id)

        async def read() -> dict[str, Any]:
            return await self("run.get", run_id=run_id)

        def finished(view: dict[str, Any]) -> bool:
            if view["status"] in TERMINAL_RUN_STATUSES:
                return True
            if step is None:
                return False
            if step not in view["steps"]:
                raise InvalidRequest("run.wait", f"run {run_id} has no step {step!r}")
            return view["steps"][step]["status"] in DONE_STEP_STATUSES | {StepStatus.CANCELLED}

        try:
            view = await asyncio.wait_for(await_run(self.nc, run_id, read, finished, step, recheck=1.0), timeout)
            return True, view
        except TimeoutError:
            view = await read()
            return finished(view), view
