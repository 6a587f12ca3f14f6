"""One state machine shape for the whole project: an enum plus a transition table.

``StateMachine(name, table, initial)`` keeps the current state; ``fire(trigger)``
looks up ``(state, trigger)`` in the table, moves, and emits a
``<name>.transition`` event.  An undefined pair raises :class:`IllegalTransition`
and leaves the state untouched, so callers map it to their protocol's error.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from .events import emit

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(Exception):
    def __init__(self, machine: str, state: enum.Enum, trigger: str) -> None:
        super().__init__(f"{machine}: no transition from {state.name} on {trigger}")
        self.machine = machine
        self.state = state
        self.trigger = trigger


class StateMachine(Generic[S]):
    def __init__(
        self,
        name: str,
        table: Mapping[tuple[S, str], S],
        initial: S,
        **context: Any,
    ) -> None:
        self.name = name
        self.table = table
        self.state: S = initial
        self.context = context

    def can(self, trigger: str) -> bool:
        return (self.state, trigger) in self.table

    def fire(self, trigger: str, **cause: Any) -> S:
        key = (self.state, trigger)
        if key not in self.table:
            raise IllegalTransition(self.name, self.state, trigger)
        old = self.state
        self.state = self.table[key]
        emit(
            f"{self.name}.transition",
            **self.context,
            trigger=trigger,
            old=old.name,
            new=self.state.name,
            **cause,
        )
        return self.state

    def force(self, state: S, trigger: str, **cause: Any) -> None:
        """Set the state outside the table (reset paths); still logged."""
        old = self.state
        self.state = state
        emit(
            f"{self.name}.transition",
            **self.context,
            trigger=trigger,
            old=old.name,
            new=state.name,
            forced=True,
            **cause,
        )
