"""Publish and subscribe round trips of one device within its own topics, with paho-mqtt.

QoS 0, 1 and 2 (granted QoS 2), a binary payload, a 200 kB payload, a retained message delivered
on subscription, the MQTT 5 message properties forwarded unchanged, and UNSUBSCRIBE.
"""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from peer import Peer, check, main, v5


def run(args):
    device = args.device
    peer = Peer(args, device, args.token)
    check(not peer.connected(), f"{device}: session present on a clean start")
    base = f"devices/{device}/interop"
    check(peer.subscribe([(f"{base}/#", 2)]) == [2], f"{device}: SUBACK should grant QoS 2")

    # Each QoS, with every byte value in the payload.
    for qos in (0, 1, 2):
        topic = f"{base}/qos{qos}"
        payload = f"{args.transport} {args.protocol} qos{qos} ".encode() + bytes(range(256))
        reason = peer.publish(topic, payload, qos)
        check(reason == 0, f"{device}: QoS {qos} publish acknowledged with {reason:#04x}")
        peer.expect_message(topic, payload, qos)

    # A payload far larger than one TCP segment or WebSocket frame.
    large = bytes(i % 251 for i in range(200_000))
    peer.publish(f"{base}/large", large, 1)
    peer.expect_message(f"{base}/large", large, 1)

    # A retained message reaches a later subscription with the retain flag set (3.1.1
    # [MQTT-3.3.1-8], 5.0 §3.3.1.3).
    retained = f"devices/{device}/retained/state"
    peer.publish(retained, b"on", 1, retain=True)
    check(peer.subscribe([(f"devices/{device}/retained/#", 1)]) == [1], "retained SUBACK")
    peer.expect_message(retained, b"on", 1, retain=True)
    # An empty retained message deletes it (3.1.1 [MQTT-3.3.1-10], 5.0 [MQTT-3.3.1-6]): a new
    # subscription gets nothing, and the marker after it comes first.
    peer.publish(retained, b"", 1, retain=True)
    peer.expect_message(retained, b"", 1)
    check(peer.subscribe([(f"devices/{device}/retained/+", 1)]) == [1], "retained SUBACK")
    peer.publish(f"devices/{device}/retained/marker", b"marker", 1)
    peer.expect_message(f"devices/{device}/retained/marker", b"marker", 1)

    if v5(args):
        # The server forwards the message properties unchanged ([MQTT-3.3.2-4], [MQTT-3.3.2-15],
        # [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-20]) and the expiry minus the time the
        # message waited [MQTT-3.3.2-6].
        properties = Properties(PacketTypes.PUBLISH)
        properties.PayloadFormatIndicator = 1
        properties.MessageExpiryInterval = 3600
        properties.ContentType = "application/json"
        properties.ResponseTopic = f"devices/{device}/reply"
        properties.CorrelationData = b"\x00\x01\xfe\xff"
        properties.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
        topic = f"{base}/properties"
        peer.publish(topic, b'{"t": 21.5}', 1, properties=properties)
        m = peer.expect_message(topic, b'{"t": 21.5}', 1)
        got = m.properties
        check(getattr(got, "PayloadFormatIndicator", None) == 1, f"payload format: {got}")
        expiry = getattr(got, "MessageExpiryInterval", None)
        check(expiry is not None and 3590 <= expiry <= 3600, f"message expiry: {got}")
        check(getattr(got, "ContentType", None) == "application/json", f"content type: {got}")
        check(getattr(got, "ResponseTopic", None) == f"devices/{device}/reply", f"{got}")
        check(getattr(got, "CorrelationData", None) == b"\x00\x01\xfe\xff", f"{got}")
        # User properties keep their order, duplicates included [MQTT-3.3.2-18].
        check(
            getattr(got, "UserProperty", None) == [("a", "1"), ("b", "2"), ("a", "3")],
            f"user properties: {got}",
        )

    # After UNSUBSCRIBE nothing more arrives from that filter: a marker published after a message
    # to the old filter is the first thing received.
    peer.unsubscribe(f"{base}/#")
    check(peer.subscribe([(f"devices/{device}/marker", 1)]) == [1], "marker SUBACK")
    peer.publish(f"{base}/after", b"not for me", 1)
    peer.publish(f"devices/{device}/marker", b"marker", 1)
    peer.expect_message(f"devices/{device}/marker", b"marker", 1)

    peer.disconnect()


if __name__ == "__main__":
    main(run)
