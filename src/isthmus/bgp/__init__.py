"""The node's BGP speaker: BIRD 2, driven through its configuration and control socket, announcing the
prefixes the agent hands it (floating IPs, service VIPs with a local ready backend)."""

from isthmus.bgp.config import Prefix, Settings
from isthmus.bgp.control import BgpError, PeerState
from isthmus.bgp.speaker import Speaker, SpeakerState

__all__ = ["BgpError", "PeerState", "Prefix", "Settings", "Speaker", "SpeakerState"]
