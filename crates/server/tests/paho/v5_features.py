"""MQTT 5 features with paho-mqtt, within one device's own topics.

- No Local: the server does not send a client its own messages on such a subscription.
- Subscription Identifiers: a message carries the identifiers of the subscriptions it matched.
- Shared subscriptions.
- Topic Aliases from the client: a PUBLISH with an empty Topic Name and a known alias.
- Retain Handling and Retain As Published.
- The client's Maximum Packet Size: the server does not send it larger packets.
- The client's Receive Maximum: the server has no more unacknowledged QoS 1 messages in flight.
"""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from peer import Peer, check, main


def subscription_identifier(value):
    properties = Properties(PacketTypes.SUBSCRIBE)
    properties.SubscriptionIdentifier = value
    return properties


def run(args):
    device = args.device
    base = f"devices/{device}"
    peer = Peer(args, device, args.token)
    peer.connected()

    # No Local [MQTT-3.8.3-3]: the own message is not sent back; the marker after it comes first.
    codes = peer.subscribe(
        [(f"{base}/nolocal", SubscribeOptions(qos=1, noLocal=True)), (f"{base}/marker", 1)]
    )
    check(codes == [1, 1], f"No Local SUBACK {codes}")
    peer.publish(f"{base}/nolocal", b"own", 1)
    peer.publish(f"{base}/marker", b"marker", 1)
    peer.expect_message(f"{base}/marker", b"marker", 1)

    # Subscription Identifiers: two overlapping subscriptions. The server sends one copy with both
    # identifiers [MQTT-3.3.4-4] or one copy per subscription with its own [MQTT-3.3.4-5].
    check(peer.subscribe([(f"{base}/ids/#", 1)], subscription_identifier(7)) == [1], "ids SUBACK")
    check(peer.subscribe([(f"{base}/ids/+", 1)], subscription_identifier(9)) == [1], "ids SUBACK")
    peer.publish(f"{base}/ids/x", b"ids", 1)
    peer.publish(f"{base}/marker", b"end of ids", 1)
    seen = []
    while True:
        m = peer.message()
        if m.topic == f"{base}/marker":
            check(m.payload == b"end of ids", f"marker {m.payload!r}")
            break
        check(m.topic == f"{base}/ids/x" and m.payload == b"ids", f"message on {m.topic}")
        seen.append(sorted(getattr(m.properties, "SubscriptionIdentifier", [])))
    check(seen in ([[7, 9]], [[7], [9]], [[9], [7]]), f"subscription identifiers {seen}")

    # A shared subscription (§4.8.2) within the device's subtree: one copy per message.
    check(peer.subscribe([(f"$share/g/{base}/shared/#", 1)]) == [1], "shared SUBACK")
    peer.publish(f"{base}/shared/x", b"shared", 1)
    peer.expect_message(f"{base}/shared/x", b"shared", 1)
    peer.publish(f"{base}/marker", b"after shared", 1)
    peer.expect_message(f"{base}/marker", b"after shared", 1)

    # Topic Alias (§3.3.2.3.4): set with the first PUBLISH, used with an empty Topic Name after.
    # The client announced no Topic Alias Maximum, so the server sends full topics [MQTT-3.3.2-11].
    alias = Properties(PacketTypes.PUBLISH)
    alias.TopicAlias = 1
    check(peer.subscribe([(f"{base}/alias", 1)]) == [1], "alias SUBACK")
    peer.publish(f"{base}/alias", b"first", 1, properties=alias)
    peer.expect_message(f"{base}/alias", b"first", 1)
    peer.publish("", b"second", 1, properties=alias)
    peer.expect_message(f"{base}/alias", b"second", 1)

    # Retain Handling 2: no retained message at subscription [MQTT-3.3.1-11]; Retain As Published:
    # the live message keeps its retain flag [MQTT-3.3.1-13].
    peer.publish(f"{base}/kept/old", b"old", 1, retain=True)
    options = SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2)
    check(peer.subscribe([(f"{base}/kept/#", options)]) == [1], "Retain Handling 2 SUBACK")
    peer.publish(f"{base}/kept/new", b"new", 1, retain=True)
    peer.expect_message(f"{base}/kept/new", b"new", 1, retain=True)
    # Retain Handling 1: retained messages only when the subscription is new [MQTT-3.3.1-10].
    options = SubscribeOptions(qos=1, retainHandling=1)
    check(peer.subscribe([(f"{base}/kept/old", options)]) == [1], "Retain Handling 1 SUBACK")
    peer.expect_message(f"{base}/kept/old", b"old", 1, retain=True)
    check(peer.subscribe([(f"{base}/kept/old", options)]) == [1], "Retain Handling 1 SUBACK")
    peer.publish(f"{base}/marker", b"after resubscribing", 1)
    peer.expect_message(f"{base}/marker", b"after resubscribing", 1)
    peer.disconnect()

    # The client's Maximum Packet Size: the server drops a message too large for it rather than
    # send it [MQTT-3.1.2-25]; the small one after it arrives.
    small = Peer(args, device, args.token)
    small.connected(MaximumPacketSize=512)
    check(small.subscribe([(f"{base}/size/#", 1)]) == [1], "size SUBACK")
    small.publish(f"{base}/size/large", bytes(1000), 1)
    small.publish(f"{base}/size/small", b"small", 1)
    small.expect_message(f"{base}/size/small", b"small", 1)
    small.disconnect()

    # The client's Receive Maximum: at most 2 unacknowledged QoS 1 messages from the server
    # [MQTT-3.3.4-9]; each acknowledgement lets one more through.
    slow = Peer(args, device, args.token, manual_ack=True)
    slow.connected(ReceiveMaximum=2)
    check(slow.subscribe([(f"{base}/flow/#", 1)]) == [1], "flow SUBACK")
    for i in range(5):
        slow.publish(f"{base}/flow/{i}", str(i).encode(), 1)
    in_flight = [slow.expect_message(f"{base}/flow/{i}", str(i).encode(), 1) for i in range(2)]
    slow.nothing_more(1.0)
    for i in range(2, 5):
        m = in_flight.pop(0)
        slow.client.ack(m.mid, m.qos)
        in_flight.append(slow.expect_message(f"{base}/flow/{i}", str(i).encode(), 1))
        slow.nothing_more(0.2)
    for m in in_flight:
        slow.client.ack(m.mid, m.qos)
    slow.disconnect()


if __name__ == "__main__":
    main(run)
