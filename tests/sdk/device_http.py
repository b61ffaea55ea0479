"""ThingsBoard's official Python HTTP device SDK (TBHTTPDevice of tb-mqtt-client), unchanged.

Usage: device_http.py BASE_URL TOKEN
Connects (the SDK posts empty telemetry), prints "ready", then long-polls for server-side RPC
and shared attribute changes through the SDK's subscriptions. It answers every RPC through the
SDK's send_rpc with the request's id (the SDK posts {"method":..,"params":..} as the reply) and
prints one JSON line per event: {"rpc": <request>} or {"attributes": <update>}. It also prints
{"own_rpc": <answer>} for a device-side request sent at start. It runs until its standard
input closes (or for WAIT seconds).
"""
import json
import sys
import threading

from tb_device_http import TBHTTPDevice

WAIT = 120
out = threading.Lock()


def emit(event):
    with out:
        print(json.dumps(event), flush=True)


def main():
    base, token = sys.argv[1], sys.argv[2]
    device = TBHTTPDevice(base, token)
    if not device.connect():
        sys.exit("the SDK could not connect")

    def on_rpc(request):
        emit({"rpc": request})
        device.send_rpc(name="echo", params=request.get("params"), rpc_id=request["id"])

    def on_attributes(update):
        emit({"attributes": update})

    device.subscribe("rpc", on_rpc)
    device.subscribe("attributes", on_attributes)
    emit("ready")
    emit({"own_rpc": device.send_rpc(name="getCurrentTime", params={})})
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(WAIT)


if __name__ == "__main__":
    main()
