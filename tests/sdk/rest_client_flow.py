"""ThingsBoard's official REST client (tb-rest-client 4.3, RestClientCE) driving an app's whole
flow against the engine, unchanged; the device side is the official MQTT device SDK.

Usage: rest_client_flow.py BASE_URL MQTT_HOST MQTT_PORT
Prints one line per step ("ok <step>") and "done" at the end; any failure is an exception
(exit status 1) with the step that failed.

The tenant administrator creates a customer, a customer user (activation link, activation), two
devices and an asset tree, assigns one device and the asset to the customer and relates them;
a device connects with the device SDK and answers RPC. The customer user logs in, refreshes
its token, lists its devices, reads latest and historic telemetry and attributes, writes a
shared attribute (the device receives it), calls the device (two-way and one-way RPC), walks
the relations, is refused the tenant's device, and claims the second device.
"""
import json
import re
import sys
import threading
import time

from tb_rest_client.rest import ApiException
from tb_rest_client.rest_client_ce import (
    ActivateUserRequest,
    Asset,
    AssetId,
    ClaimRequest,
    Customer,
    CustomerId,
    Device,
    DeviceId,
    DeviceProfileId,
    EntityRelation,
    RestClientCE,
    TenantId,
    User,
    UserId,
)
from tb_device_mqtt import TBDeviceMqttClient

ADMIN = ("tenant@thingsboard.org", "tenant")
NULL_CUSTOMER = "13814000-1dd2-11b2-8080-808080808080"


def ok(step, value=None):
    # 4.3 returns (does not raise) a response it could not read: fail on it here.
    if isinstance(value, BaseException):
        raise AssertionError(f"{step}: the client could not read the answer: {value!r}")
    print(f"ok {step}", flush=True)
    return value


def refused(step, call, status):
    try:
        call()
    except ApiException as e:
        assert e.status == status, f"{step}: {e.status} {e.body}"
        print(f"ok {step} ({status})", flush=True)
        return
    raise AssertionError(f"{step}: not refused")


def main():
    base, mqtt_host, mqtt_port = sys.argv[1], sys.argv[2], int(sys.argv[3])

    admin = RestClientCE(base)
    admin.login(*ADMIN)
    assert admin.get_token(), "admin login"
    me = ok("admin get_user", admin.get_user())
    assert me.authority == "TENANT_ADMIN", me
    tenant_id = TenantId(id=me.tenant_id.id, entity_type="TENANT")

    customer = ok("save_customer", admin.save_customer(Customer(title="Flow customer", email="ops@flow.test")))
    customer_id = CustomerId(id=customer.id.id, entity_type="CUSTOMER")
    assert ok("get_customer_by_id", admin.get_customer_by_id(customer_id)).title == "Flow customer"
    customers = ok("get_customers", admin.get_customers(page_size=10, page=0))
    assert [c.title for c in customers.data] == ["Flow customer"], customers

    email, password = "flow.user@flow.test", "Flow-secret-1"
    user = ok("save_user", admin.save_user(
        User(email=email, authority="CUSTOMER_USER", customer_id=customer_id, tenant_id=tenant_id,
             first_name="Flow", last_name="User"),
        send_activation_mail=False))
    user_id = UserId(id=user.id.id, entity_type="USER")
    link = ok("get_activation_link", admin.get_activation_link(user_id))
    # 4.3 shows a text/plain answer as str(bytes): "b'http://...'" (so it does with ThingsBoard).
    token = re.search(r"activateToken=([A-Za-z0-9]+)", str(link)).group(1)
    pair = ok("activate_user", admin.activate_user(
        ActivateUserRequest(activate_token=token, password=password), send_activation_mail=False))
    assert pair.token and pair.refresh_token, pair
    users = ok("get_customer_users", admin.get_customer_users(customer_id, page_size=10, page=0))
    assert [u.email for u in users.data] == [email], users

    profile = ok("get_default_device_profile_info", admin.get_default_device_profile_info())
    profile_id = DeviceProfileId(id=profile.id.id, entity_type="DEVICE_PROFILE")
    thermostat = ok("save_device", admin.save_device(
        Device(name="Flow thermostat", type="default", label="Hall", device_profile_id=profile_id),
        access_token="flow-thermostat-token"))
    spare = ok("save_device (spare)", admin.save_device(
        Device(name="Flow spare", type="default", device_profile_id=profile_id),
        access_token="flow-spare-token"))
    thermostat_id = DeviceId(id=thermostat.id.id, entity_type="DEVICE")
    spare_id = DeviceId(id=spare.id.id, entity_type="DEVICE")
    found = ok("get_tenant_device", admin.get_tenant_device("Flow thermostat"))
    assert found.id.id == thermostat.id.id
    creds = ok("get_device_credentials_by_device_id", admin.get_device_credentials_by_device_id(thermostat_id))
    assert creds.credentials_id == "flow-thermostat-token", creds
    assigned = ok("assign_device_to_customer", admin.assign_device_to_customer(customer_id, thermostat_id))
    assert assigned.customer_id.id == customer.id.id, assigned

    building = ok("save_asset", admin.save_asset(Asset(name="Flow building", type="building")))
    floor = ok("save_asset (floor)", admin.save_asset(Asset(name="Flow floor", type="floor")))
    building_id = AssetId(id=building.id.id, entity_type="ASSET")
    floor_id = AssetId(id=floor.id.id, entity_type="ASSET")
    for asset_id in (building_id, floor_id):
        ok("assign_asset_to_customer", admin.assign_asset_to_customer(customer_id, asset_id))
    ok("save_relation", admin.save_relation(
        EntityRelation(_from=building_id, to=floor_id, type="Contains", type_group="COMMON")))
    ok("save_relation (device)", admin.save_relation(
        EntityRelation(_from=floor_id, to=thermostat_id, type="Contains", type_group="COMMON")))
    assets = ok("get_tenant_assets", admin.get_tenant_assets(page_size=10, page=0))
    assert sorted(a.name for a in assets.data) == ["Flow building", "Flow floor"], assets

    # The device: the official device SDK, answering RPC and taking shared attributes.
    device = TBDeviceMqttClient(mqtt_host, mqtt_port, username="flow-thermostat-token")
    shared = []
    got_shared = threading.Event()

    def on_rpc(request_id, body):
        device.send_rpc_reply(request_id, {"done": body.get("method"), "params": body.get("params")})

    def on_attributes(content, *_):
        shared.append(content)
        got_shared.set()

    device.set_server_side_rpc_request_handler(on_rpc)
    device.subscribe_to_all_attributes(on_attributes)
    device.connect()
    device.send_telemetry({"ts": int(time.time() * 1000) - 60_000, "values": {"temperature": 20.5}}).get()
    device.send_telemetry({"temperature": 21.5, "mode": "heat"}).get()
    ok("device connected and sent telemetry")

    # The app, as the customer user.
    app = RestClientCE(base)
    app.login(email, password)
    assert app.get_token(), "customer user login"
    who = ok("app get_user", app.get_user())
    assert who.authority == "CUSTOMER_USER" and who.customer_id.id == customer.id.id, who
    app.refresh()
    assert app.get_token(), "refresh"
    ok("refresh", app.get_user())

    devices = ok("get_customer_devices", app.get_customer_devices(customer_id, page_size=10, page=0))
    assert [d.name for d in devices.data] == ["Flow thermostat"], devices
    assert ok("get_device_by_id", app.get_device_by_id(thermostat_id)).name == "Flow thermostat"

    deadline = time.time() + 60
    latest = {}
    while time.time() < deadline:
        latest = ok("get_latest_timeseries", app.get_latest_timeseries(thermostat_id, keys="temperature,mode"))
        if latest.get("temperature", [{}])[0].get("value") == "21.5":
            break
        time.sleep(0.2)
    assert latest["temperature"][0]["value"] == "21.5" and latest["mode"][0]["value"] == "heat", latest
    now = int(time.time() * 1000)
    history = ok("get_timeseries", app.get_timeseries(thermostat_id, keys="temperature",
                                                      start_ts=now - 3_600_000, end_ts=now + 60_000))
    assert [p["value"] for p in history["temperature"]] == ["21.5", "20.5"], history

    app.save_device_attributes(thermostat_id, "SHARED_SCOPE", {"target": 22})
    ok("save_device_attributes")
    assert got_shared.wait(30), "the device did not get the shared attribute"
    assert shared[-1].get("target") == 22, shared
    attributes = ok("get_attributes_by_scope", app.get_attributes_by_scope(thermostat_id, "SHARED_SCOPE", "target"))
    assert attributes[0]["key"] == "target" and attributes[0]["value"] == 22, attributes

    answer = ok("handle_two_way_device_rpc_request", app.handle_two_way_device_rpc_request(
        thermostat_id, {"method": "setMode", "params": {"mode": "eco"}}))
    assert answer == {"done": "setMode", "params": {"mode": "eco"}}, answer
    ok("handle_one_way_device_rpc_request", app.handle_one_way_device_rpc_request(
        thermostat_id, {"method": "blink", "params": {}}))

    children = ok("find_by_from", app.find_by_from(building_id, "Contains"))
    assert [r.to.id for r in children] == [floor.id.id], children
    infos = ok("find_info_by_from", app.find_info_by_from(floor_id))
    assert [i.to_name for i in infos] == ["Flow thermostat"], infos
    parents = ok("find_by_to", app.find_by_to(thermostat_id, "Contains"))
    assert [r._from.id for r in parents] == [floor.id.id], parents
    assert ok("get_asset_by_id", app.get_asset_by_id(building_id)).name == "Flow building"

    refused("get_device_by_id (the tenant's)", lambda: app.get_device_by_id(spare_id), 403)
    refused("get_tenant_devices", lambda: app.get_tenant_devices(page_size=10, page=0), 403)
    refused("save_customer", lambda: app.save_customer(Customer(title="Mine")), 403)

    # Claiming: the spare device asks (device API), the customer user claims it.
    admin.claim_device("flow-spare-token", body={"secretKey": "s3cret", "durationMs": 60000})
    deadline = time.time() + 60
    claim = None
    while time.time() < deadline:
        try:
            claim = app.device_controller.claim_device_using_post1(
                device_name="Flow spare", body=ClaimRequest(secret_key="s3cret"))
            break
        except ApiException as e:
            assert e.status == 400 and json.loads(e.body) == "FAILURE", (e.status, e.body)
            time.sleep(0.2)
    assert claim and claim["response"] == "SUCCESS", claim
    assert claim["device"]["customerId"]["id"] == customer.id.id, claim
    ok("claim_device_using_post1")
    devices = ok("get_customer_devices (after the claim)",
                 app.get_customer_devices(customer_id, page_size=10, page=0))
    assert sorted(d.name for d in devices.data) == ["Flow spare", "Flow thermostat"], devices
    admin.re_claim_device("Flow spare")
    ok("re_claim_device")
    unassigned = ok("unassign_device_from_customer", admin.unassign_device_from_customer(thermostat_id))
    assert unassigned.customer_id.id == NULL_CUSTOMER, unassigned
    refused("get_device_by_id (taken back)", lambda: app.get_device_by_id(thermostat_id), 403)

    ok("delete_relation", admin.delete_relation(floor_id, "Contains", thermostat_id))
    assert ok("find_by_from (after the deletion)", admin.find_by_from(floor_id, "Contains")) == []
    admin.delete_asset(floor_id)
    assert ok("find_by_from (asset deleted)", admin.find_by_from(building_id, "Contains")) == []
    admin.delete_user(user_id)
    admin.delete_customer(customer_id)
    admin.delete_device(spare_id)
    ok("deletions")
    device.disconnect()
    print("done", flush=True)


if __name__ == "__main__":
    main()
