"""When a JetStream cluster is ready for R3 streams: one meta leader every node names,
all peers known, and the leader seeing every running node current. Read from /jsz as
the test clusters and the drill deployments both do."""

from __future__ import annotations

from dagnats.infra.engine.server import meta_counts, settled_leader


def _jsz(leader: str | None, replicas: list[dict]) -> dict:
    return {"meta_cluster": {"leader": leader, "replicas": replicas}}


def _peer(name: str, current: bool = True, offline: bool = False) -> dict:
    return {"name": name, "current": current, "offline": offline}


def test_a_node_counts_itself_and_the_peers_it_sees_current():
    jsz = _jsz("n1", [_peer("n2"), _peer("n3", current=False)])
    assert meta_counts(jsz, "n1") == ("n1", 3, 2)
    assert meta_counts(_jsz("n1", [_peer("n2"), _peer("n3", offline=True)]), "n1") == ("n1", 3, 2)


def test_a_node_without_a_cluster_is_its_own_leader():
    assert meta_counts({}, "solo") == ("solo", 1, 1)


def test_a_cluster_is_settled_once_its_leader_has_every_running_node_current():
    names = ["n1", "n2", "n3"]
    ready = [("n1", 3, 3), ("n1", 3, 1), ("n1", 3, 1)]
    assert settled_leader(names, ready, 3) == "n1"
    leader_behind = [("n1", 3, 2), ("n1", 3, 3), ("n1", 3, 3)]  # followers' views do not count
    assert settled_leader(names, leader_behind, 3) is None


def test_a_cluster_is_not_settled_while_nodes_disagree_or_miss_peers():
    names = ["n1", "n2", "n3"]
    assert settled_leader(names, [("n1", 3, 3), ("n2", 3, 3), ("n1", 3, 3)], 3) is None
    assert settled_leader(names, [("n1", 3, 3), (None, 3, 3), ("n1", 3, 3)], 3) is None
    assert settled_leader(names, [("n1", 3, 3), ("n1", 2, 3), ("n1", 3, 3)], 3) is None


def test_with_one_node_down_the_running_ones_settle_without_it():
    # n3 is stopped: the two running nodes still know it as a peer, the leader sees n2 current.
    assert settled_leader(["n1", "n2"], [("n2", 3, 1), ("n2", 3, 2)], 3) == "n2"
