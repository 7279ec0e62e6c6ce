"""Offers: a bridge that loses a call's record to another says so on an offer made to it, and
nothing on an offer made to every bridge at once (the gateway takes the first answer as the
verdict)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dialtone_bridge.service import Bridge
from dialtone_proto import CallAnswer, CallOffer, subjects

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

OFFER = CallOffer(
    call_id="CA" + "1" * 32, stream_sid="MZ1", stream_key="k" * 22, epoch=1, account_sid="AC1",
    from_number="+15551112222", to_number="+15005550006", agent="support", gateway_id="gw-1",
)


# The fakes below stand in for the bridge's context, its call book and a NATS message: only what
# taking an offer reads. Hence the type: ignore where they are handed over.


class LostRecord:
    """The call book of a bridge that lost the race for the record: another bridge wrote it first."""

    async def assign(self, *_: object) -> None:
        return None


class Offer:
    def __init__(self, subject: str) -> None:
        self.subject, self.data, self.answers = subject, OFFER.model_dump_json().encode(), []

    async def respond(self, data: bytes) -> None:
        self.answers.append(CallAnswer.model_validate_json(data))


def bridge() -> Bridge:
    b = Bridge.__new__(Bridge)  # only what taking an offer reads
    b.ctx = SimpleNamespace(bridge_id="b1", settings=SimpleNamespace(max_calls=10))  # type: ignore[assignment]
    b.calls = LostRecord()  # type: ignore[assignment]
    b.sessions, b._started_at, b._claiming, b.draining = {}, {}, set(), False
    return b


@pytest.mark.parametrize("subject", [subjects.CALL_OFFER, subjects.bridge_offer("b1")])
async def test_a_bridge_that_loses_the_record_refuses_an_offer_made_to_it(subject: str) -> None:
    offer = Offer(subject)
    await bridge()._take_offer(offer)  # type: ignore[arg-type]
    assert [(a.accepted, a.reason) for a in offer.answers] == [(False, "unconfirmed: not the stream holding the call")]


async def test_a_bridge_that_loses_the_record_says_nothing_to_an_offer_made_to_every_bridge() -> None:
    offer = Offer(subjects.CALL_OFFER_ANY)
    b = bridge()
    await b._take_offer(offer)  # type: ignore[arg-type]
    assert offer.answers == []
    b.draining = True  # nor does a draining one: another bridge may take the call
    await b._take_offer(offer)  # type: ignore[arg-type]
    assert offer.answers == []
