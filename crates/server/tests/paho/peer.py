"""A paho-mqtt client for the interop scripts, driven step by step.

`Peer` wraps one `paho.mqtt.client.Client`: it runs paho's network loop in a thread and turns
every callback into an event on a queue, so a script reads like a conversation ("subscribe, wait
for the SUBACK, publish, wait for the message") and every wait has a deadline.

Every script takes the same command-line arguments (see `arguments`) and reports a failure by
raising `Failure`; `main` prints it on stderr and exits with status 1.
"""

import argparse
import queue
import sys
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# How long a script waits for something that should happen, in seconds.
WAIT = 15.0


class Failure(Exception):
    """What the server did differs from what the script expected."""


def check(condition, message):
    """Raises `Failure(message)` unless `condition` holds."""
    if not condition:
        raise Failure(message)


def arguments(description):
    """The command line every script takes: where the server is and which device to be."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--transport", choices=["tcp", "tls", "ws"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], required=True)
    parser.add_argument("--ca", help="the CA certificate (PEM) that signed the server's")
    parser.add_argument("--device", required=True, help="an active device id")
    parser.add_argument("--token", required=True, help="a credential of --device")
    parser.add_argument("--other-device", help="a second active device id")
    parser.add_argument("--other-token", help="a credential of --other-device")
    parser.add_argument("--inactive-device", help="a registered, not activated, device id")
    parser.add_argument("--inactive-token", help="a credential of --inactive-device")
    return parser.parse_args()


def main(run):
    """Runs `run(args)`; exits 1 with the reason on stderr when it fails."""
    args = arguments(sys.modules["__main__"].__doc__)
    try:
        run(args)
    except Failure as failure:
        print(
            f"FAIL ({args.transport}, MQTT {args.protocol}): {failure}", file=sys.stderr, flush=True
        )
        sys.exit(1)
    except Exception:
        print(f"ERROR ({args.transport}, MQTT {args.protocol}):", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)


def v5(args):
    return args.protocol == "5"


class Peer:
    """One MQTT connection of a device, as paho makes it.

    The client id and the user name are both the device id, as the server requires.
    """

    def __init__(self, args, device, token, clean_session=True, manual_ack=False, will=None):
        self.args = args
        self.name = f"{device} ({args.transport}, MQTT {args.protocol})"
        options = {}
        if v5(args):
            protocol = mqtt.MQTTv5
        else:
            protocol = mqtt.MQTTv311
            options["clean_session"] = clean_session
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device,
            protocol=protocol,
            transport="websockets" if args.transport == "ws" else "tcp",
            manual_ack=manual_ack,
            reconnect_on_failure=False,
            **options,
        )
        if args.transport == "ws":
            self.client.ws_set_options(path="/mqtt")
        if args.transport == "tls":
            # Verifies the chain against the test CA, and the name "localhost" against the
            # certificate.
            self.client.tls_set(ca_certs=args.ca)
        self.client.username_pw_set(device, token)
        if will is not None:
            topic, payload, qos = will
            self.client.will_set(topic, payload, qos)
        self.events = {
            kind: queue.Queue()
            for kind in ("connack", "suback", "unsuback", "published", "message", "disconnect")
        }
        self.client.on_connect = lambda c, u, flags, reason, props: self.events["connack"].put(
            (flags, reason, props)
        )
        self.client.on_subscribe = lambda c, u, mid, reasons, props: self.events["suback"].put(
            (mid, reasons)
        )
        self.client.on_unsubscribe = lambda c, u, mid, reasons, props: self.events[
            "unsuback"
        ].put((mid, reasons))
        self.client.on_publish = lambda c, u, mid, reason, props: self.events["published"].put(
            (mid, reason)
        )
        self.client.on_message = lambda c, u, message: self.events["message"].put(message)
        self.client.on_disconnect = lambda c, u, flags, reason, props: self.events[
            "disconnect"
        ].put(reason)

    def expect(self, kind, what):
        """The next event of `kind`; fails after `WAIT` seconds."""
        try:
            return self.events[kind].get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.name}: no {what} within {WAIT} s") from None

    def connect(self, clean_start=True, session_expiry=None, **connect_properties):
        """Connects and returns the CONNACK: (reason code, session present).

        MQTT 5 only: `session_expiry` is the Session Expiry Interval; `connect_properties` are more
        CONNECT properties by paho's names (`ReceiveMaximum=2`).
        """
        host = "localhost" if self.args.transport == "tls" else "127.0.0.1"
        options = {}
        if v5(self.args):
            options["clean_start"] = clean_start
            properties = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                properties.SessionExpiryInterval = session_expiry
            for name, value in connect_properties.items():
                setattr(properties, name, value)
            options["properties"] = properties
        self.client.connect(host, self.args.port, keepalive=30, **options)
        self.client.loop_start()
        flags, reason, _ = self.expect("connack", "CONNACK")
        return reason, flags.session_present

    def connected(self, clean_start=True, session_expiry=None, **connect_properties):
        """Connects, checks that the server accepted, and returns whether a session was present."""
        reason, present = self.connect(clean_start, session_expiry, **connect_properties)
        check(
            reason.value == 0,
            f"{self.name}: CONNACK {reason} ({reason.value:#04x}), expected success",
        )
        return present

    def subscribe(self, filters, properties=None):
        """Subscribes to `filters`, a list of (filter, QoS or paho `SubscribeOptions`); returns the
        SUBACK codes as numbers."""
        result, mid = self.client.subscribe(filters, properties=properties)
        check(result == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe failed locally: {result}")
        got, reasons = self.expect("suback", f"SUBACK for {filters}")
        check(got == mid, f"{self.name}: SUBACK for message id {got}, expected {mid}")
        return [r.value for r in reasons]

    def unsubscribe(self, filters):
        """Unsubscribes from `filters`; waits for the UNSUBACK."""
        result, mid = self.client.unsubscribe(filters)
        check(result == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: unsubscribe failed locally: {result}")
        got, _ = self.expect("unsuback", f"UNSUBACK for {filters}")
        check(got == mid, f"{self.name}: UNSUBACK for message id {got}, expected {mid}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        """Publishes and waits until paho reports it done (sent for QoS 0, PUBACK for QoS 1,
        PUBCOMP for QoS 2); returns the reason code of the acknowledgement as a number."""
        info = self.client.publish(topic, payload, qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish failed locally: {info.rc}")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                mid, reason = self.events["published"].get(
                    timeout=max(0.0, deadline - time.monotonic())
                )
            except queue.Empty:
                raise Failure(
                    f"{self.name}: publish of QoS {qos} to {topic} not acknowledged within {WAIT} s"
                ) from None
            if mid == info.mid:
                return reason.value

    def message(self):
        """The next message the server delivered."""
        return self.expect("message", "message")

    def nothing_more(self, seconds):
        """Checks that no message arrives within `seconds`: for what the server must hold back,
        where no later message can mark the end."""
        try:
            m = self.events["message"].get(timeout=seconds)
        except queue.Empty:
            return
        raise Failure(f"{self.name}: unexpected message on {m.topic}: {m.payload[:64]!r}")

    def expect_message(self, topic, payload, qos, retain=False, dup=None):
        """Checks the next message: its topic, payload, QoS and flags; returns it."""
        m = self.message()
        check(m.topic == topic, f"{self.name}: message on {m.topic!r}, expected {topic!r}")
        check(
            m.payload == payload,
            f"{self.name}: payload {m.payload[:64]!r} ({len(m.payload)} bytes) on {topic}, "
            f"expected {payload[:64]!r} ({len(payload)} bytes)",
        )
        check(m.qos == qos, f"{self.name}: message on {topic} at QoS {m.qos}, expected {qos}")
        check(m.retain == retain, f"{self.name}: retain flag {m.retain} on {topic}")
        if dup is not None:
            check(m.dup == dup, f"{self.name}: DUP flag {m.dup} on {topic}, expected {dup}")
        return m

    def disconnect(self, reason=None):
        """Sends DISCONNECT (with `reason`, a v5 reason code number) and waits for the close."""
        if reason is None:
            self.client.disconnect()
        else:
            self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=reason))
        self.expect("disconnect", "end of the connection after DISCONNECT")
        self.client.loop_stop()

    def drop(self):
        """Closes the network connection without a DISCONNECT, as a device losing power would."""
        self.client.loop_stop()
        self.client.socket().close()

    def closed(self):
        """Waits for the server to close the connection (after a refusing CONNACK)."""
        self.expect("disconnect", "end of the connection")
        self.client.loop_stop()
