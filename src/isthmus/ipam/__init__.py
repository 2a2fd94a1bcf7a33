"""IPAM: allocation of addresses, VNIs and other numbered resources inside ledger transactions."""

from isthmus.ipam.pool import IPAM, Exhausted, IpamError, Pool, Taken, allocate, held, in_use, release, retire
from isthmus.ipam.pools import VNI_POOL, subnet_pool

__all__ = [
    "IPAM",
    "VNI_POOL",
    "Exhausted",
    "IpamError",
    "Pool",
    "Taken",
    "allocate",
    "held",
    "in_use",
    "release",
    "retire",
    "subnet_pool",
]
