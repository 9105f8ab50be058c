"""An MQTT 5 device on the Eclipse Paho Python client, driven by the Go test.

argv: device, password (a JWT), then host:port of each server to try in
turn. It reconnects with Clean Start 0 to the next server whenever its
connection ends. It prints one JSON event per line; on stdin, "pub X"
publishes X (QoS 1) on its outbox, "sub TOPIC" subscribes, "quit" ends.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

device, password, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
inbox, outbox = f"devices/{device}/inbox", f"devices/{device}/outbox"
lock = threading.Lock()
turn = 0


def say(**event):
    with lock:
        print(json.dumps(event), flush=True)


def code(rc):
    return getattr(rc, "value", rc)


def connect_props():
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    return p


def target():
    host, port = servers[turn % len(servers)].rsplit(":", 1)
    return host, int(port)


def on_connect(client, _userdata, flags, rc, props):
    users = dict(getattr(props, "UserProperty", []) or [])
    say(event="connack", rc=code(rc), session_present=bool(flags.get("session present")), server=users.get("server", ""))


def on_disconnect(client, _userdata, rc, props=None):
    global turn
    say(event="disconnect", rc=code(rc))
    turn += 1
    host, port = target()
    client.connect_async(host, port, keepalive=30, clean_start=False, properties=connect_props())


def on_message(_client, _userdata, msg):
    users = dict(getattr(msg.properties, "UserProperty", []) or [])
    say(event="message", topic=msg.topic, payload=msg.payload.decode(), qos=msg.qos, dup=bool(msg.dup), mid=msg.mid, seq=users.get("seq", ""))


def on_subscribe(_client, _userdata, mid, rcs, _props):
    say(event="suback", mid=mid, codes=[code(rc) for rc in rcs])


def on_publish(_client, _userdata, mid):
    say(event="puback", mid=mid)


client = mqtt.Client(client_id=device, protocol=mqtt.MQTTv5)
client.username_pw_set(device, password)
client.reconnect_delay_set(min_delay=1, max_delay=1)
client.on_connect, client.on_disconnect = on_connect, on_disconnect
client.on_message, client.on_subscribe, client.on_publish = on_message, on_subscribe, on_publish
host, port = target()
client.connect(host, port, keepalive=30, clean_start=False, properties=connect_props())
client.loop_start()
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "pub":
        info = client.publish(outbox, arg, qos=1)
        say(event="published", mid=info.mid, payload=arg)
    elif cmd == "sub":
        client.subscribe(arg or inbox, qos=1)
    elif cmd == "quit":
        break
client.on_disconnect = None
client.disconnect()
client.loop_stop()
