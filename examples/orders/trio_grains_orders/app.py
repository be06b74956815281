"""The reference application's grains: order processing over a JetStream stream.

Orders are published to the stream namespace ``orders`` (key: the order id, msg id: the
order id, so a repeated publish is stored once). Every order is delivered to the
:class:`OrderGrain` keyed by its id (an implicit subscription), on whichever silo pulls
its partition; the grain validates it, records it (``received``, with the JetStream
sequence), adds it to the :class:`CustomerGrain` of its customer, and marks it
``processed``. The item is acknowledged only after the handler returned, i.e. after the
state was written. A redelivered order finds its state ``processed`` and is not processed
again; the customer total counts each order id once. An invalid order raises
:class:`InvalidOrder` (a :class:`~trio_grains.RejectedItemError`): it goes to the
``dead-letters`` namespace at once with the reason (:class:`DeadLetterGrain` keeps them),
and processing goes on. So does a payload that is not an order at all.
"""

from __future__ import annotations

import datetime

import attrs

from trio_grains import (
    DeadLetter,
    Grain,
    GrainInterface,
    RejectedItemError,
    SequenceToken,
    grain_type,
    idempotent,
    implicit_subscription,
    persistent_state,
    read_only,
)


@attrs.frozen
class OrderLine:
    sku: str
    quantity: int
    price: int  # cents


@attrs.frozen
class Order:
    id: str
    customer: str
    lines: tuple[OrderLine, ...]
    amount: int  # cents: the sum of the lines
    created: datetime.datetime


class InvalidOrder(RejectedItemError):
    """The order cannot be processed: it goes to the dead letters at once, with this reason."""


def problems_of(order: Order, key: str) -> list[str]:
    """What is wrong with *order* (published under *key*); empty when it is valid."""
    problems = []
    if order.id != key:
        problems.append(f"published under {key!r} but its id is {order.id!r}")
    if not order.customer:
        problems.append("no customer")
    if not order.lines:
        problems.append("no lines")
    if any(line.quantity <= 0 or line.price < 0 for line in order.lines):
        problems.append("a line with a non-positive quantity or a negative price")
    if order.amount <= 0:
        problems.append(f"amount {order.amount} is not positive")
    elif order.amount != sum(line.quantity * line.price for line in order.lines):
        problems.append(f"amount {order.amount} is not the sum of the lines")
    return problems


@attrs.define
class OrderState:
    status: str = "new"  # -> "received" -> "processed"
    sequence: int | None = None  # the JetStream sequence it was received with
    customer: str = ""
    amount: int = 0
    deliveries: int = 0  # times the stream delivered it (redeliveries included)
    processed_at: datetime.datetime | None = None


@grain_type("order")
class IOrder(GrainInterface):
    @read_only
    @idempotent
    async def status(self) -> OrderState: ...


@implicit_subscription("orders")
class OrderGrain(Grain, IOrder):
    state = persistent_state(OrderState)

    async def on_stream_item(self, order: Order, token: SequenceToken) -> None:
        state = self.state.state
        state.deliveries += 1
        if state.status == "processed":
            await self.state.write()  # a redelivery: processed once in effect
            return
        problems = problems_of(order, self.primary_key)
        if problems:
            raise InvalidOrder("; ".join(problems))
        state.status, state.sequence = "received", token.sequence
        state.customer, state.amount = order.customer, order.amount
        await self.state.write()
        await self.get_grain(ICustomer, order.customer).add_order(order.id, order.amount)
        state.status = "processed"
        state.processed_at = datetime.datetime.now(datetime.UTC)
        await self.state.write()

    @read_only
    @idempotent
    async def status(self) -> OrderState:
        return self.state.state


@attrs.define
class CustomerState:
    orders: int = 0
    total: int = 0  # cents
    order_ids: list[str] = attrs.field(factory=list)


@grain_type("customer")
class ICustomer(GrainInterface):
    @idempotent
    async def add_order(self, order_id: str, amount: int) -> None: ...

    @read_only
    @idempotent
    async def totals(self) -> CustomerState: ...


class CustomerGrain(Grain, ICustomer):
    state = persistent_state(CustomerState)

    @idempotent
    async def add_order(self, order_id: str, amount: int) -> None:
        state = self.state.state
        if order_id in state.order_ids:
            return  # the order grain was redelivered between its two writes
        state.order_ids.append(order_id)
        state.orders += 1
        state.total += amount
        await self.state.write()

    @read_only
    @idempotent
    async def totals(self) -> CustomerState:
        return self.state.state


@attrs.define
class Letters:
    reasons: list[str] = attrs.field(factory=list)


@grain_type("deadletter")
class IDeadLetters(GrainInterface):
    @read_only
    async def reasons(self) -> list[str]: ...


@implicit_subscription("dead-letters")
class DeadLetterGrain(Grain, IDeadLetters):
    """The dead letters of one order id (keyed like the order)."""

    state = persistent_state(Letters)

    async def on_stream_item(self, letter: DeadLetter) -> None:
        self.state.state.reasons.append(letter.error)
        await self.state.write()

    @read_only
    async def reasons(self) -> list[str]:
        return self.state.state.reasons


GRAINS = [OrderGrain, CustomerGrain, DeadLetterGrain]
