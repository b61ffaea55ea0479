"""ThingsBoard's official device SDK provisions a device over MQTT, then uses the credentials.

Usage: provision_client.py HOST PORT KEY SECRET DEVICE_NAME
Prints one JSON line: the credentials the SDK got back (null if none), and the result code of
a telemetry publish made with them.
"""
import json
import sys

from tb_device_mqtt import TBDeviceMqttClient

host, port, key, secret, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
credentials = TBDeviceMqttClient.provision(host, key, secret, port=port, device_name=name)
seen = {"credentials": credentials, "telemetry_rc": None}
if credentials and credentials.get("credentialsType") == "ACCESS_TOKEN":
    client = TBDeviceMqttClient(host, port=port, username=credentials["credentialsValue"])
    client.connect(timeout=20)
    seen["telemetry_rc"] = client.send_telemetry({"provisioned_temp": 19.5}).get()
    client.disconnect()
print(json.dumps(seen))
