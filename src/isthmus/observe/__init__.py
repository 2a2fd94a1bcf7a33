"""Reading what the network does, cluster-wide: the agents' flow records."""
