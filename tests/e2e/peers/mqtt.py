"""A real MQTT client over WebSocket (Debian's python3-paho-mqtt), for the Wireshark
plugin's test: connects to ws://127.0.0.1:PORT/mqtt, subscribes to a topic, publishes a
message to it with QoS 1, waits for it to come back, disconnects. Exit 0 when it did.

    mqtt.py PORT
"""
import sys
import time

import paho.mqtt.client as mqtt

got, subscribed = [], []
client = mqtt.Client(client_id="wstap-test", transport="websockets")
client.ws_set_options(path="/mqtt")
client.on_message = lambda c, userdata, m: got.append((m.topic, m.payload))
client.on_subscribe = lambda c, userdata, mid, qos: subscribed.append(mid)
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_start()


def until(done):
    deadline = time.time() + 10
    while not done() and time.time() < deadline:
        time.sleep(0.01)


client.subscribe("wstap/test", qos=1)
until(lambda: subscribed)
client.publish("wstap/test", b"hello over mqtt", qos=1).wait_for_publish()
until(lambda: got)
client.disconnect()
client.loop_stop()
sys.exit(0 if got == [("wstap/test", b"hello over mqtt")] else 1)
