"""The Kubernetes network manager: from Kubernetes objects to networks, addresses, VIPs and policy."""
