"""The OpenStack side: a Neutron-compatible network API (and the slice of Keystone its clients need) over
the same ledger, IPAM and compiler as the Kubernetes side."""
