"""What a handoff's sender hears from the run's owner (``wire.handoff.ask_owner``): its
answer; NOT_STORED when no owner is there (or it answers something else); LATE when an
owner took the request and did not answer in time (it may still store the fact)."""

from __future__ import annotations

import nats

from dagnats.infra.wire.handoff import LATE, NOT_STORED, REPEATED, STORED, ask_owner, hand_over
from dagnats.infra.wire.lean import LeanRequests


def test_the_owner_s_answer_no_owner_and_no_answer_in_time_are_told_apart(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        try:
            replies = {"owner.stored": STORED, "owner.repeated": REPEATED, "owner.odd": b"?"}

            async def answer(msg):
                if msg.subject in replies:
                    await msg.respond(replies[msg.subject])  # "owner.busy" is taken and never answered

            await nc.subscribe("owner.*", cb=answer)
            await nc.flush()
            heard = {}
            for requests in (nc, LeanRequests(nc)):  # the engine's lean requests, and a plain connection
                for subject in ("owner.stored", "owner.repeated", "owner.odd", "owner.busy", "nobody.here"):
                    heard[(type(requests).__name__, subject)] = await ask_owner(requests, subject, b"{}", timeout=0.3)
            handed = await hand_over(nc, "owner.busy", b"{}", timeout=0.3), await hand_over(nc, "owner.stored", b"{}")
            return heard, handed
        finally:
            await nc.close()

    heard, handed = run(body())
    for kind in ("Client", "LeanRequests"):
        assert heard[(kind, "owner.stored")] == STORED and heard[(kind, "owner.repeated")] == REPEATED
        assert heard[(kind, "owner.odd")] == NOT_STORED and heard[(kind, "nobody.here")] == NOT_STORED
        assert heard[(kind, "owner.busy")] == LATE
    assert handed == (False, True)  # a worker's result not answered in time goes to the inbox
