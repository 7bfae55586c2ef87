"""Protocol ids and topic names: the network's versioned vocabulary, in one place."""

from libp2p.custom_types import TProtocol

#: gateway -> node: InferenceRequest / ResponseFrame exchanges, stream reusable between them
INFERENCE = TProtocol("/tooti/inference/1.0.0")
#: node -> gateway: Hello / Intro / (Proof) / Welcome, then heartbeats one way and
#: gateway-list updates the other, for as long as the node is connected
CONTROL = TProtocol("/tooti/control/2.0.0")
#: gateway <-> gateway: exchange of signed gateway records (pb.GatewayList)
PEERING = TProtocol("/tooti/peering/2.0.0")
#: gossipsub topic, among member gateways only, carrying signed gateway records
GATEWAYS_TOPIC = "/tooti/gateways/2"
#: private Kademlia DHT protocol (never the public IPFS DHT), among member gateways only
DHT_PROTOCOL = TProtocol("/tooti/kad/1.0.0")
