"""The scale simulator at a size CI affords: 20 simulated agents on a real etcd, each holding its slice,
while pods churn through the reconciler (the full sizes are `python -m bench scale`)."""

from __future__ import annotations

from bench.scale import measure


def test_a_fleet_of_sliced_agents_receives_each_change_where_it_is_needed() -> None:
    figures = measure(20, churn_s=5.0, cut_s=5.0)
    assert figures["deliveries_beyond_concerned_20"] == 0  # no node hears of a pod it has no use for
    assert 1 <= figures["deliveries_per_change_20"] <= figures["concerned_nodes_per_change_20"]
    assert figures["deliveries_per_change_20"] < 20  # not the whole fleet
    assert figures["fanout_p50_s_20"] < 2.0
    assert figures["resync_relisted_20"] == 0  # a cut agent resumes from its revisions
    assert figures["resync_s_20"] < 10 and figures["resync_after_compaction_s_20"] < 10
    assert figures["cold_start_bytes_20"] < 2e6
    assert (
        figures["routes_per_node_20"] < 4 * 20 + 50
    )  # about a block and a node route per node, not 600 pods
