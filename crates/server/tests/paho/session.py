"""A persistent session resumed with paho-mqtt: messages queued while the device was offline, and
unacknowledged messages sent again.

A device's topics are its own (client id and user name must both be the device id), so no other
client can publish to them while the device is offline. The device's will does it: the session
subscribes to its own status topic and the connection drops without a normal DISCONNECT, so the
server publishes the will to that topic just after the connection ended, into the now offline
session. The session also holds a QoS 1 message that was delivered but never acknowledged.

On resumption (MQTT 3.1.1 Clean Session 0; MQTT 5 Clean Start 0 with a Session Expiry Interval)
the CONNACK says the session is present, the unacknowledged message comes again with DUP set, the
will arrives from the queue, and the subscriptions still hold without a new SUBSCRIBE. A second
connection with the same client id takes the session over from a live one.
"""

from peer import Peer, check, main, v5

# How long the session outlives its connection (MQTT 5), in seconds.
EXPIRY = 300


def run(args):
    device = args.device
    status = f"devices/{device}/status"
    inbox = f"devices/{device}/inbox"

    # 1. A new session that outlives its connection: MQTT 5 starts clean and asks for an expiry,
    #    MQTT 3.1.1 sets Clean Session 0 (nothing to resume yet either way).
    first = Peer(
        args, device, args.token, clean_session=False, manual_ack=True, will=(status, b"offline", 1)
    )
    present = first.connected(clean_start=True, session_expiry=EXPIRY)
    check(not present, f"{device}: session present on the first connection")
    check(first.subscribe([(status, 1), (inbox, 1)]) == [1, 1], f"{device}: SUBACK [1, 1]")
    first.publish(inbox, b"unacknowledged", 1)
    first.expect_message(inbox, b"unacknowledged", 1, dup=False)
    # With manual acknowledgements, paho never sends the PUBACK for it.

    # 2. The connection ends without a normal DISCONNECT: MQTT 5 says so with reason 0x04
    #    (Disconnect with Will Message); the MQTT 3.1.1 client just closes its socket.
    if v5(args):
        first.disconnect(reason=0x04)
    else:
        first.drop()

    # 3. Resume the session.
    second = Peer(args, device, args.token, clean_session=False, manual_ack=True)
    present = second.connected(clean_start=False, session_expiry=EXPIRY)
    check(present, f"{device}: CONNACK without session present on resumption")
    # The unacknowledged PUBLISH is sent again with its DUP flag set ([MQTT-4.4.0-1],
    # [MQTT-3.3.1-1]), before the message queued while offline.
    again = second.expect_message(inbox, b"unacknowledged", 1, dup=True)
    will = second.expect_message(status, b"offline", 1)
    second.client.ack(again.mid, again.qos)
    second.client.ack(will.mid, will.qos)
    # The subscriptions are part of the session: a new message arrives without a new SUBSCRIBE.
    second.publish(status, b"online", 1)
    online = second.expect_message(status, b"online", 1, dup=False)
    second.client.ack(online.mid, online.qos)
    second.disconnect()

    # 4. Everything was acknowledged: resuming again sends nothing old. A marker published now is
    #    the first message.
    third = Peer(args, device, args.token, clean_session=False)
    check(third.connected(clean_start=False, session_expiry=EXPIRY), f"{device}: session lost")
    third.publish(inbox, b"marker", 1)
    third.expect_message(inbox, b"marker", 1, dup=False)

    # 5. A second connection with the same client id takes the session over while the first is
    #    still open: the server closes the first [MQTT-3.1.4-3] (MQTT 5: DISCONNECT 0x8E, Session
    #    taken over) and the new connection finds the session.
    taker = Peer(args, device, args.token, clean_session=False)
    check(taker.connected(clean_start=False, session_expiry=EXPIRY), f"{device}: no session")
    reason = third.expect("disconnect", "close of the connection taken over")
    if v5(args):
        check(reason.value == 0x8E, f"{device}: DISCONNECT {reason} on takeover, expected 0x8e")
    third.client.loop_stop()
    taker.publish(inbox, b"after takeover", 1)
    taker.expect_message(inbox, b"after takeover", 1)
    taker.disconnect()

    # 6. A clean start discards the session.
    fourth = Peer(args, device, args.token, clean_session=True)
    check(not fourth.connected(clean_start=True), f"{device}: session present after a clean start")
    fourth.disconnect()


if __name__ == "__main__":
    main(run)
