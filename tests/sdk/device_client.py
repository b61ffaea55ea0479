"""ThingsBoard's official Python device SDK (tb-mqtt-client) against the engine, unchanged.

Usage: device_client.py HOST PORT TOKEN [PASSWORD CLIENT_ID]
(with PASSWORD and CLIENT_ID, TOKEN is the user name of MQTT basic credentials)
Connects with the access token, waits for the SDK to apply the server's session limits
(getSessionLimits), sends telemetry and client attributes, asks for a client and a shared
attribute until both come back, and prints what it saw as one JSON object. Exits non-zero
when a step times out.
"""
import json
import sys
import threading
import time

from tb_device_mqtt import TBDeviceMqttClient

WAIT = 30


def main():
    host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if len(sys.argv) > 5:
        client = TBDeviceMqttClient(host, port, username=token, password=sys.argv[4],
                                    client_id=sys.argv[5])
    else:
        client = TBDeviceMqttClient(host, port, username=token)
    client.connect()
    deadline = time.time() + WAIT
    while not client.rate_limits_received and time.time() < deadline:
        time.sleep(0.05)
    seen = {
        "limits_received": client.rate_limits_received,
        "max_payload_size": client.max_payload_size,
        "telemetry_rc": client.send_telemetry({"sdk_temp": 21.5}).get(),
        "attributes_rc": client.send_attributes({"sdk_fw": "v1.0", "sdk_rev": "7"}).get(),
    }
    answer = {}
    deadline = time.time() + WAIT
    while time.time() < deadline:
        done = threading.Event()

        def on_attributes(content, exception, *_):
            answer["content"] = content
            answer["exception"] = None if exception is None else str(exception)
            done.set()

        client.request_attributes(client_keys=["sdk_fw", "sdk_rev"], shared_keys=["interval"],
                                  callback=on_attributes)
        if not done.wait(WAIT):
            break
        content = answer.get("content") or {}
        if "client" in content and "shared" in content:
            break
        time.sleep(0.1)
    seen["attributes"] = answer.get("content")
    client.disconnect()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
