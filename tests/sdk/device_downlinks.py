"""ThingsBoard's official Python device SDK (tb-mqtt-client) taking the way back, unchanged.

Usage: device_downlinks.py HOST PORT TOKEN
Connects with the access token and waits for the server's session limits, then prints
"ready". From then on it answers every server-side RPC with {"echo": <params>} through the
SDK's send_rpc_reply, and prints one JSON line per event as the SDK hands it over:
{"rpc": {"id": .., "body": ..}} or {"attributes": <update>}. It runs until its standard input
closes (or for WAIT seconds).
"""
import json
import sys
import threading
import time

from tb_device_mqtt import TBDeviceMqttClient

WAIT = 120
out = threading.Lock()


def emit(event):
    with out:
        print(json.dumps(event), flush=True)


def main():
    host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = TBDeviceMqttClient(host, port, username=token)

    def on_rpc(request_id, body):
        emit({"rpc": {"id": request_id, "body": body}})
        client.send_rpc_reply(request_id, {"echo": body.get("params")})

    def on_attributes(content, *_):
        emit({"attributes": content})

    client.set_server_side_rpc_request_handler(on_rpc)
    client.subscribe_to_all_attributes(on_attributes)
    client.connect()
    deadline = time.time() + WAIT
    while not client.rate_limits_received and time.time() < deadline:
        time.sleep(0.05)
    if not client.rate_limits_received:
        sys.exit("no session limits came")
    emit("ready")
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(WAIT)
    client.disconnect()


if __name__ == "__main__":
    main()
