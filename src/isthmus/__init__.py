"""Isthmus: one SDN control plane for Kubernetes pods, OpenStack VMs and bare-metal hosts."""

__version__ = "0.1.0"
