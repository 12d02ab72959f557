"""The liveness watchdog: which services it restarts, with fake probes and a fake supervisord."""

from deploy.watchdog import Liveness, Target, check_once


class FakeSupervisor:
    def __init__(self, states: dict[str, str]) -> None:
        self.state = states
        self.restarted: list[str] = []

    def states(self) -> dict[str, str]:
        return dict(self.state)

    def restart(self, program: str) -> None:
        self.restarted.append(program)


def _target(name: str, answers: list[bool]) -> Target:
    return Target(name, lambda timeout_s: answers.pop(0))


def test_a_service_that_answered_and_then_misses_three_probes_is_restarted_once():
    liveness = Liveness(failures=3, start_grace_s=60)
    supervisor = FakeSupervisor({"router-main": "RUNNING"})
    target = _target("router-main", [True, False, False, False, True])
    restarted = [check_once([target], liveness, supervisor, 2.0, now=t) for t in range(5)]
    assert restarted == [[], [], [], ["router-main"], []]
    assert supervisor.restarted == ["router-main"]


def test_a_missed_probe_between_answers_is_forgiven():
    liveness = Liveness(failures=3, start_grace_s=60)
    supervisor = FakeSupervisor({"head": "RUNNING"})
    target = _target("head", [True, False, False, True, False, False, True])
    for t in range(7):
        check_once([target], liveness, supervisor, 2.0, now=t)
    assert supervisor.restarted == []


def test_a_starting_service_is_left_alone_until_its_start_grace_runs_out():
    liveness = Liveness(failures=3, start_grace_s=30)
    assert [liveness.observe("head", False, now=t) for t in (0, 10, 20, 29)] == [None] * 4
    assert liveness.observe("head", False, now=30) is not None  # never answered within the grace


def test_a_service_supervisord_is_not_running_is_not_probed_and_starts_over():
    liveness = Liveness(failures=2, start_grace_s=60)
    supervisor = FakeSupervisor({"miner": "RUNNING"})
    probed: list[float] = []
    target = Target("miner", lambda timeout_s: probed.append(timeout_s) or False)
    liveness.observe("miner", True, now=0)
    check_once([target], liveness, supervisor, 2.0, now=1)  # one miss
    supervisor.state["miner"] = "BACKOFF"  # supervisord restarts it itself
    check_once([target], liveness, supervisor, 2.0, now=2)
    assert probed == [2.0]
    supervisor.state["miner"] = "RUNNING"
    check_once([target], liveness, supervisor, 2.0, now=3)  # a fresh start: within its grace
    assert supervisor.restarted == []
