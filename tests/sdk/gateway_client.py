"""ThingsBoard's official Python gateway client (TBGatewayMqttClient of tb-mqtt-client),
unchanged, driven line by line.

Usage: gateway_client.py HOST PORT TOKEN
Connects as the gateway, waits for the server's session limits and prints "ready". It answers
every RPC to a device behind it with {"echo": <params>} (gw_send_rpc_reply) and prints one
JSON line per event the client hands over: {"rpc": <request>}, {"attributes": <update>},
{"limits": {...}}. Each line of standard input is a command, answered by one JSON line:
  {"connect": NAME, "type": TYPE}         -> {"rc": <publish result>}
  {"disconnect": NAME}                    -> {"rc": ..}
  {"telemetry": NAME, "values": {..}}     -> {"rc": ..}
  {"attributes": NAME, "values": {..}}    -> {"rc": ..}
  {"claim": NAME, "secret": S, "ms": N}   -> {"rc": ..}
  {"request": NAME, "keys": [..], "client": BOOL} -> {"response": <content>}
It runs until its standard input closes.
"""
import json
import sys
import threading
import time

from tb_gateway_mqtt import TBGatewayMqttClient

WAIT = 30
out = threading.Lock()


def emit(event):
    with out:
        print(json.dumps(event), flush=True)


def main():
    host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    gateway = TBGatewayMqttClient(host, port, username=token)

    def on_rpc(client, request):
        emit({"rpc": request})
        data = request.get("data") or {}
        client.gw_send_rpc_reply(request["device"], data.get("id"), {"echo": data.get("params")})

    gateway.gw_set_server_side_rpc_request_handler(on_rpc)
    gateway.gw_subscribe_to_all_attributes(lambda content: emit({"attributes": content}))
    gateway.connect()
    deadline = time.time() + WAIT
    while not gateway.rate_limits_received and time.time() < deadline:
        time.sleep(0.05)
    if not gateway.rate_limits_received:
        sys.exit("no session limits came")
    emit({"limits": {"max_payload_size": gateway.max_payload_size}})
    emit("ready")
    for line in sys.stdin:
        command = json.loads(line)
        if "connect" in command:
            info = gateway.gw_connect_device(command["connect"], command.get("type", "default"))
        elif "disconnect" in command:
            info = gateway.gw_disconnect_device(command["disconnect"])
        elif "telemetry" in command:
            info = gateway.gw_send_telemetry(command["telemetry"], command["values"])
        elif "attributes" in command:
            info = gateway.gw_send_attributes(command["attributes"], command["values"])
        elif "claim" in command:
            info = gateway.gw_claim(command["claim"], command["secret"], command["ms"])
        elif "request" in command:
            done = threading.Event()
            answer = {}

            def on_response(content, exception, *_):
                answer["content"] = content
                answer["exception"] = None if exception is None else str(exception)
                done.set()

            if command.get("client"):
                gateway.gw_request_client_attributes(command["request"], command["keys"], on_response)
            else:
                gateway.gw_request_shared_attributes(command["request"], command["keys"], on_response)
            done.wait(WAIT)
            emit({"response": answer.get("content"), "exception": answer.get("exception")})
            continue
        else:
            emit({"error": "unknown command"})
            continue
        emit({"rc": info.get()})
    gateway.disconnect()


if __name__ == "__main__":
    main()
