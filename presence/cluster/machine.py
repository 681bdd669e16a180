"""The node's life on its Redis link, as one explicit state machine (automat).

    stopped --start--> connecting --connected--> registering --registered--> resyncing
    registering --came_back_empty--> waiting_for_peers --peers_waited--> resyncing
    resyncing --resynced--> serving
    connecting --lost--> away --retry--> connecting
    registering, waiting_for_peers, resyncing, serving --lost--> away
    registering, waiting_for_peers, resyncing, serving --reaped / resync_needed--> registering
    registering, waiting_for_peers, resyncing, serving --stop--> stopping --left--> stopped
    connecting, away, stopped --stop--> stopped

In the four states from registering to serving the node writes its changes to Redis (a
write issued there reaches Redis after the re-registration, in order); in the others it
serves its clients from its own model alone. What a state means for the rest of the node
is its ``Phase``, which every transition hands to the core (``Actions.entered``) before
any of the transition's actions run, so the node's routing and ``/health`` always agree
with the machine. Inputs that arrive where they mean nothing (a loss while already away,
a re-registration request while not connected) are explicit no-ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from automat import TypeMachine, TypeMachineBuilder


@dataclass(frozen=True)
class Phase:
    name: str
    writable: bool  # this node's changes are written to Redis
    reason: str | None = None  # why /health is degraded
    unreachable: bool = False  # degraded because Redis is unreachable: the link says why

    def problem(self, link_problem: str | None) -> str | None:
        """What /health reports in this state (None: healthy)."""
        if self.unreachable:
            return f"redis unavailable: {link_problem or 'not connected'}"
        return self.reason


REREGISTERING = "redis: re-registering this node's connections"
STOPPED = Phase("stopped", False, unreachable=True)
CONNECTING = Phase("connecting", False, unreachable=True)
AWAY = Phase("away", False, unreachable=True)
REGISTERING = Phase("registering", True, REREGISTERING)
WAITING_FOR_PEERS = Phase("waiting_for_peers", True, REREGISTERING)
RESYNCING = Phase("resyncing", True, REREGISTERING)
SERVING = Phase("serving", True)
STOPPING = Phase("stopping", False, "stopping: leaving the cluster")
PHASES = (
    STOPPED,  # the first one is the initial state
    CONNECTING,
    AWAY,
    REGISTERING,
    WAITING_FOR_PEERS,
    RESYNCING,
    SERVING,
    STOPPING,
)


class Inputs(Protocol):
    def start(self) -> None:
        "The service starts."

    def connected(self) -> None:
        "A connection attempt succeeded."

    def lost(self) -> None:
        "A connection attempt failed, or the established link went."

    def retry(self) -> None:
        "The backoff after a failure is over."

    def registered(self) -> None:
        "Redis holds this node's connections again."

    def came_back_empty(self) -> None:
        "Registered, but Redis had lost its data: the other nodes must re-register too."

    def peers_waited(self) -> None:
        "The other nodes had their time to re-register."

    def resynced(self) -> None:
        "Every watched user was re-read."

    def reaped(self) -> None:
        "Another node took this one for dead and ended its connections."

    def resync_needed(self) -> None:
        "Redis did not know one of this node's connections."

    def stop(self) -> None:
        "The service stops."

    def left(self) -> None:
        "This node's connections left Redis (or could not)."


class Actions(Protocol):
    """What the machine has the node do (``registration.Registration``)."""

    def entered(self, phase: Phase) -> None: ...
    def connect(self) -> None: ...
    def back_off(self) -> None: ...
    def register(self) -> None: ...
    def wait_for_peers(self) -> None: ...
    def read_watches(self) -> None: ...
    def serve(self) -> None: ...
    def go_local(self) -> None: ...
    def halt(self) -> None: ...
    def leave(self) -> None: ...
    def disconnect(self) -> None: ...


Step = Callable[[Actions], None]
ONLINE_STATES = (REGISTERING, WAITING_FOR_PEERS, RESYNCING, SERVING)
OFFLINE_STATES = (CONNECTING, AWAY)


def _connect(a: Actions) -> None:
    a.connect()


def _back_off(a: Actions) -> None:
    a.back_off()


def _register(a: Actions) -> None:
    a.register()


def _wait_for_peers(a: Actions) -> None:
    a.wait_for_peers()


def _read_watches(a: Actions) -> None:
    a.read_watches()


def _serve(a: Actions) -> None:
    a.serve()


def _go_local(a: Actions) -> None:
    a.go_local()


def _halt(a: Actions) -> None:
    a.halt()


def _leave(a: Actions) -> None:
    a.leave()


def _disconnect(a: Actions) -> None:
    a.disconnect()


# (from, input, to, what the node does), every transition of the machine.
TRANSITIONS: list[tuple[Phase, Callable[..., None], Phase, Sequence[Step]]] = [
    (STOPPED, Inputs.start, CONNECTING, [_connect]),
    (CONNECTING, Inputs.connected, REGISTERING, [_register]),
    (CONNECTING, Inputs.lost, AWAY, [_back_off]),
    (AWAY, Inputs.retry, CONNECTING, [_connect]),
    (REGISTERING, Inputs.registered, RESYNCING, [_read_watches]),
    (REGISTERING, Inputs.came_back_empty, WAITING_FOR_PEERS, [_wait_for_peers]),
    (WAITING_FOR_PEERS, Inputs.peers_waited, RESYNCING, [_read_watches]),
    (RESYNCING, Inputs.resynced, SERVING, [_serve]),
    *[(state, Inputs.lost, AWAY, [_go_local, _back_off]) for state in ONLINE_STATES],
    *[(state, Inputs.reaped, REGISTERING, [_register]) for state in ONLINE_STATES],
    *[(state, Inputs.resync_needed, REGISTERING, [_register]) for state in ONLINE_STATES],
    *[(state, Inputs.stop, STOPPING, [_halt, _leave]) for state in ONLINE_STATES],
    *[(state, Inputs.stop, STOPPED, [_halt, _disconnect]) for state in OFFLINE_STATES],
    (STOPPING, Inputs.left, STOPPED, [_disconnect]),
    (STOPPED, Inputs.stop, STOPPED, [_disconnect]),  # never started: nothing to leave
]
# Inputs that mean nothing where they arrive: the state stays, nothing is done.
IGNORED: list[tuple[Phase, Callable[..., None]]] = [
    (STOPPING, Inputs.stop),
    *[(state, Inputs.lost) for state in (AWAY, STOPPING, STOPPED)],
    *[(state, Inputs.reaped) for state in (*OFFLINE_STATES, STOPPING, STOPPED)],
    *[(state, Inputs.resync_needed) for state in (*OFFLINE_STATES, STOPPING, STOPPED)],
]


def _transition(phase: Phase, steps: Sequence[Step]) -> Callable[[Inputs, Actions], None]:
    def run(machine: Inputs, core: Actions) -> None:
        core.entered(phase)
        for step in steps:
            step(core)

    return run


def _nothing(machine: Inputs, core: Actions) -> None:
    pass


def _build() -> TypeMachine[Inputs, Actions]:
    builder = TypeMachineBuilder(Inputs, Actions)  # type: ignore[type-abstract]
    states: dict[Phase, Any] = {phase: builder.state(phase.name) for phase in PHASES}
    for old, given, new, steps in TRANSITIONS:
        run = _transition(new, steps)
        run.__name__ = f"{old.name}_{given.__name__}_{new.name}"
        states[old].upon(given).to(states[new])(run)
    for state, given in IGNORED:
        states[state].upon(given).loop()(_nothing)
    return builder.build()


LinkMachine = _build()
