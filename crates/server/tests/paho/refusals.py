"""What the server refuses, as paho-mqtt sees it.

- CONNECT with a wrong password: MQTT 5 reason 0x86 (Bad User Name or Password), MQTT 3.1.1
  return code 4 (paho reports v3.1.1 return codes as the MQTT 5 reason of the same meaning: 4 is
  "Bad user name or password", 0x86).
- CONNECT with a user name other than the client id: the same.
- CONNECT of a registered device that is not active yet: 0x87 (Not authorized) / return code 5.
- MQTT 5 CONNECT with an empty client id: 0x85 (Client Identifier not valid).
- SUBSCRIBE outside the device's subtree: 0x87 / 0x80 (Failure) for those filters only.
- PUBLISH outside the device's subtree: MQTT 5 PUBACK 0x87; MQTT 3.1.1 cannot say so, the PUBACK
  is a success and the message is dropped. Either way the other device does not receive it.
"""

from peer import Peer, check, main, v5

CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87


def refused(args, device, token, expected, username=None):
    peer = Peer(args, device, token)
    if username is not None:
        peer.client.username_pw_set(username, token)
    reason, present = peer.connect()
    check(
        reason.value == expected,
        f"{peer.name}: CONNACK {reason} ({reason.value:#04x}), expected {expected:#04x}",
    )
    check(
        not present,
        f"{peer.name}: session present on a refused CONNACK "
        "(3.1.1 [MQTT-3.2.2-4], 5.0 [MQTT-3.2.2-6])",
    )
    peer.closed()


def run(args):
    device, other = args.device, args.other_device
    refused(args, device, "hdc_not_the_password", BAD_USER_NAME_OR_PASSWORD)
    refused(args, device, args.token, BAD_USER_NAME_OR_PASSWORD, username=other)
    refused(args, args.inactive_device, args.inactive_token, NOT_AUTHORIZED)
    if v5(args):
        # An empty client id names no device: 0x85 (Client Identifier not valid). On MQTT 3.1.1
        # paho handles return code 2 for an empty client id itself and never reports it; the
        # rumqttc tests check that case.
        refused(args, "", args.token, CLIENT_IDENTIFIER_NOT_VALID, username=device)

    peer = Peer(args, device, args.token)
    peer.connected()
    failure = NOT_AUTHORIZED if v5(args) else 0x80
    codes = peer.subscribe([(f"devices/{device}/#", 1), (f"devices/{other}/#", 1), ("#", 0)])
    check(codes == [1, failure, failure], f"{device}: SUBACK {codes}")

    # The other device listens on its own topic while this one publishes there.
    listener = Peer(args, other, args.other_token)
    listener.connected()
    check(listener.subscribe([(f"devices/{other}/#", 1)]) == [1], f"{other}: SUBACK")
    reason = peer.publish(f"devices/{other}/commands", b"forbidden", 1)
    check(
        reason == (NOT_AUTHORIZED if v5(args) else 0),
        f"{device}: PUBACK {reason:#04x} for another device's topic",
    )
    # The connection is still usable after the refusals.
    peer.publish(f"devices/{device}/interop/still", b"still here", 1)
    peer.expect_message(f"devices/{device}/interop/still", b"still here", 1)
    # The forbidden message never reached the other device: its marker is the first message.
    listener.publish(f"devices/{other}/commands", b"marker", 1)
    listener.expect_message(f"devices/{other}/commands", b"marker", 1)
    peer.disconnect()
    listener.disconnect()


if __name__ == "__main__":
    main(run)
