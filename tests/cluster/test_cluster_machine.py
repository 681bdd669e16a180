"""The link's state machine, transition by transition, with a core that records what the
machine has it do. The expected table is written out here on its own, not read from the
machine's."""

from __future__ import annotations

from typing import Any

import pytest
from automat import NoTransition

from presence.cluster import machine
from presence.cluster.machine import PHASES, LinkMachine, Phase

STATES = [phase.name for phase in PHASES]
INPUTS = [
    "start",
    "connected",
    "lost",
    "retry",
    "registered",
    "came_back_empty",
    "peers_waited",
    "resynced",
    "reaped",
    "resync_needed",
    "stop",
    "left",
]
ONLINE = ["registering", "waiting_for_peers", "resyncing", "serving"]

# state -> inputs that lead there from the start
PATHS = {
    "stopped": [],
    "connecting": ["start"],
    "away": ["start", "lost"],
    "registering": ["start", "connected"],
    "waiting_for_peers": ["start", "connected", "came_back_empty"],
    "resyncing": ["start", "connected", "registered"],
    "serving": ["start", "connected", "registered", "resynced"],
    "stopping": ["start", "connected", "registered", "resynced", "stop"],
}

# (from, input, to, the actions in order)
TRANSITIONS = [
    ("stopped", "start", "connecting", ["connect"]),
    ("connecting", "connected", "registering", ["register"]),
    ("connecting", "lost", "away", ["back_off"]),
    ("away", "retry", "connecting", ["connect"]),
    ("registering", "registered", "resyncing", ["read_watches"]),
    ("registering", "came_back_empty", "waiting_for_peers", ["wait_for_peers"]),
    ("waiting_for_peers", "peers_waited", "resyncing", ["read_watches"]),
    ("resyncing", "resynced", "serving", ["serve"]),
    *[(s, "lost", "away", ["go_local", "back_off"]) for s in ONLINE],
    *[(s, "reaped", "registering", ["register"]) for s in ONLINE],
    *[(s, "resync_needed", "registering", ["register"]) for s in ONLINE],
    *[(s, "stop", "stopping", ["halt", "leave"]) for s in ONLINE],
    ("connecting", "stop", "stopped", ["halt", "disconnect"]),
    ("away", "stop", "stopped", ["halt", "disconnect"]),
    ("stopped", "stop", "stopped", ["disconnect"]),
    ("stopping", "left", "stopped", ["disconnect"]),
]

# (state, input): nothing happens
IGNORED = [
    ("stopping", "stop"),
    *[(s, "lost") for s in ("away", "stopping", "stopped")],
    *[(s, "reaped") for s in ("connecting", "away", "stopping", "stopped")],
    *[(s, "resync_needed") for s in ("connecting", "away", "stopping", "stopped")],
]


class Core:
    def __init__(self) -> None:
        self.phase: Phase = machine.STOPPED
        self.done: list[str] = []
        self.then: dict[str, Any] = {}  # action -> a callable run inside it

    def entered(self, phase: Phase) -> None:
        self.phase = phase

    def __getattr__(self, name: str) -> Any:
        def action() -> None:
            self.done.append(name)
            if name in self.then:
                self.then[name]()

        return action


def reach(state: str) -> tuple[Any, Core]:
    core = Core()
    m = LinkMachine(core)
    for given in PATHS[state]:
        getattr(m, given)()
    assert core.phase.name == state
    core.done = []
    return m, core


@pytest.mark.parametrize(("old", "given", "new", "actions"), TRANSITIONS)
def test_each_transition(old: str, given: str, new: str, actions: list[str]) -> None:
    m, core = reach(old)
    getattr(m, given)()
    assert (core.phase.name, core.done) == (new, actions)


@pytest.mark.parametrize(("state", "given"), IGNORED)
def test_inputs_that_mean_nothing_where_they_arrive(state: str, given: str) -> None:
    m, core = reach(state)
    getattr(m, given)()
    assert (core.phase.name, core.done) == (state, [])


DEFINED = {(old, given) for old, given, _, _ in TRANSITIONS} | set(IGNORED)
UNDEFINED = [(s, i) for s in STATES for i in INPUTS if (s, i) not in DEFINED]


@pytest.mark.parametrize(("state", "given"), UNDEFINED)
def test_every_other_input_is_a_bug(state: str, given: str) -> None:
    m, _ = reach(state)
    with pytest.raises(NoTransition):
        getattr(m, given)()


def test_the_phase_says_where_writes_go_and_what_health_reports() -> None:
    by_name = {phase.name: phase for phase in PHASES}
    assert [p for p in STATES if by_name[p].writable] == ONLINE
    assert by_name["serving"].problem("whatever") is None
    for name in ("stopped", "connecting", "away"):
        assert by_name[name].problem("lost it") == "redis unavailable: lost it"
    for name in ("registering", "waiting_for_peers", "resyncing"):
        assert by_name[name].problem(None) == "redis: re-registering this node's connections"
    assert by_name["stopping"].problem(None)


def test_an_input_given_inside_a_transition_runs_right_after_it() -> None:
    core = Core()
    m = LinkMachine(core)
    core.then["connect"] = m.connected  # the attempt answered at once
    m.start()
    assert (core.phase.name, core.done) == ("registering", ["connect", "register"])
