"""Refusals as RabbitMQ 3.10's management API gives them: 401 for logins and tags, 400 with
{"error", "reason"} naming what was wrong, 404 for missing objects, 405 for methods a
path does not take."""

from __future__ import annotations

import pytest

from tests.management.http import Api
from tests.support.node_process import NodeProcess


@pytest.fixture(scope="module")
def users(http_node: NodeProcess) -> dict[str, Api]:
    """One user per tag, each with permissions on a vhost of its own and none on /."""
    admin = Api(http_node.management_url)
    made: dict[str, Api] = {}
    for tag in ("management", "policymaker", "monitoring", "none"):
        name, vhost = f"tag-{tag}", f"vh-{tag}"
        admin.ok("PUT", f"/api/users/{name}", {"password": "pw", "tags": "" if tag == "none" else tag})
        admin.ok("PUT", f"/api/vhosts/{vhost}")
        for user in (name, "guest"):  # guest declares the queue below, as it would over AMQP
            admin.ok("PUT", f"/api/permissions/{vhost}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
        admin.ok("PUT", f"/api/queues/{vhost}/q-{tag}")
        made[tag] = admin.as_user(name, "pw")
    return made


# --------------------------------------------------------------------------- login and tags


def test_login_refusals(api: Api) -> None:
    for reply in (api.get("/api/overview", auth=False), api.as_user("guest", "wrong").get("/api/overview"),
                  api.as_user("nobody", "x").get("/api/overview"),
                  api.get("/api/overview", auth=False, headers={"Authorization": "Basic !!!"})):
        assert reply.status == 401
        assert reply.body == {"error": "not_authorized", "reason": "Login failed"}
        assert reply.headers["www-authenticate"] == 'Basic realm="RabbitMQ Management"'


def test_a_user_without_a_management_tag_is_refused(users: dict[str, Api]) -> None:
    reply = users["none"].get("/api/overview")
    assert reply.status == 401 and reply.body == {"error": "not_authorised", "reason": "Not management user"}


def test_management_user_sees_only_its_vhosts_and_no_users(users: dict[str, Api]) -> None:
    user = users["management"]
    assert user.get("/api/whoami").body == {"name": "tag-management", "tags": ["management"]}
    assert [v["name"] for v in user.get("/api/vhosts").body] == ["vh-management"]
    assert {q["vhost"] for q in user.get("/api/queues").body} == {"vh-management"}
    assert user.get("/api/queues/vh-management/q-management").status == 200
    elsewhere = user.get("/api/queues/vh-monitoring")
    assert elsewhere.status == 401 and elsewhere.body["reason"] == "User not authorised to access virtual host"
    assert user.put("/api/queues/%2F/not-mine").status == 401
    for path in ("/api/users", "/api/permissions", "/api/definitions"):
        reply = user.get(path)
        assert reply.status == 401 and reply.body["reason"] == "Not administrator user", path
    assert user.get("/api/nodes").body["reason"] == "Not monitor user"
    assert user.put("/api/vhosts/made-by-management").status == 401
    assert user.put("/api/policies/vh-management/p", {"pattern": ".", "definition": {"max-length": 1}}).body[
        "reason"] == "Not policymaker user"
    # In its own vhost it declares, publishes and gets like an AMQP client with its permissions.
    assert user.put("/api/queues/vh-management/own-q").status == 201
    body = {"routing_key": "own-q", "payload": "p", "payload_encoding": "string", "properties": {}}
    assert user.post("/api/exchanges/vh-management/amq.default/publish", body).body == {"routed": True}


def test_policymaker_sets_policies_in_its_vhosts_only(users: dict[str, Api]) -> None:
    user = users["policymaker"]
    policy = {"pattern": "^q", "definition": {"max-length": 9}}
    assert user.put("/api/policies/vh-policymaker/pm", policy).status == 201
    assert [p["name"] for p in user.get("/api/policies").body] == ["pm"]
    assert user.put("/api/policies/vh-management/pm", policy).status == 401
    assert user.delete("/api/policies/vh-policymaker/pm").status == 204


def test_monitoring_sees_everything_and_changes_nothing_it_has_no_permission_for(users: dict[str, Api]) -> None:
    user = users["monitoring"]
    vhosts = {v["name"] for v in user.get("/api/vhosts").body}
    assert {"/", "vh-management", "vh-monitoring"} <= vhosts
    assert {"vh-management", "vh-policymaker"} <= {q["vhost"] for q in user.get("/api/queues").body}
    assert user.get("/api/nodes").status == 200
    assert user.get("/api/users").status == 401
    refused = user.delete("/api/queues/vh-management/q-management")
    assert refused.status == 401


def test_amqp_permissions_hold_for_api_changes(api: Api) -> None:
    api.ok("PUT", "/api/users/narrow", {"password": "pw", "tags": "management"})
    api.ok("PUT", "/api/permissions/%2F/narrow", {"configure": "^narrow-", "write": "^narrow-", "read": "^narrow-"})
    narrow = api.as_user("narrow", "pw")
    assert narrow.put("/api/queues/%2F/narrow-q").status == 201
    refused = narrow.put("/api/queues/%2F/wide-q")
    assert refused.status == 401 and refused.body["error"] == "not_authorised"
    assert refused.body["reason"].startswith("ACCESS_REFUSED - access to queue 'wide-q' in vhost '/' refused")
    assert api.get("/api/queues/%2F/wide-q").status == 404


# --------------------------------------------------------------------------- 400


def test_bad_json_and_bad_fields_name_what_was_wrong(api: Api) -> None:
    assert api.put("/api/queues/%2F/bad", raw=b"{bad").body == {"error": "bad_request", "reason": "not_json"}
    assert api.put("/api/queues/%2F/bad", raw=b"[1, 2]").status == 400
    for body, field in (({"durable": "x"}, "durable"), ({"auto_delete": 3}, "auto_delete"),
                        ({"arguments": [1]}, "arguments")):
        reply = api.put("/api/queues/%2F/bad", body)
        assert reply.status == 400 and reply.body["error"] == "bad_request" and f"'{field}'" in reply.body["reason"]
    assert api.get("/api/queues/%2F/bad").status == 404  # nothing was declared
    reply = api.put("/api/exchanges/%2F/bad", {"type": 7})
    assert reply.status == 400 and "'type'" in reply.body["reason"]
    reply = api.put("/api/users/no-tags", {"password": "x"})
    assert reply.body == {"error": "bad_request", "reason": "tags_not_present"}
    reply = api.put("/api/permissions/%2F/guest", {"configure": ".*"})
    assert reply.body == {"error": "bad_request", "reason": "[{key_missing,write},{key_missing,read}]"}
    reply = api.put("/api/permissions/%2F/guest", {"configure": "(", "write": ".*", "read": ".*"})
    assert reply.status == 400 and "'('" in reply.body["reason"]
    reply = api.put("/api/vhosts/v-bad", {"default_queue_type": "nope"})
    assert reply.status == 400 and "'default_queue_type'" in reply.body["reason"]


def test_publish_and_get_refusals(api: Api) -> None:
    api.ok("PUT", "/api/queues/%2F/refusal-q")
    publish = "/api/exchanges/%2F/amq.default/publish"
    assert api.post(publish, {"routing_key": "k", "payload": "x"}).body == {
        "error": "bad_request", "reason": "[{key_missing,properties},{key_missing,payload_encoding}]"}
    reply = api.post(publish, {"routing_key": "k", "payload": "x", "payload_encoding": "rot13", "properties": {}})
    assert reply.status == 400 and "'payload_encoding'" in reply.body["reason"]
    reply = api.post(publish, {"routing_key": "k", "payload": "x", "payload_encoding": "string",
                               "properties": {"delivery_mode": "fast"}})
    assert reply.status == 400 and "'delivery_mode'" in reply.body["reason"]
    reply = api.post(publish, {"routing_key": "k", "payload": "x", "payload_encoding": "string",
                               "properties": {"colour": "red"}})
    assert reply.status == 400 and "'colour'" in reply.body["reason"]
    reply = api.post(publish, {"routing_key": "k", "payload": "x", "payload_encoding": "string",
                               "properties": {"user_id": "someone-else"}})
    assert reply.status == 400 and "user_id property set to 'someone-else'" in reply.body["reason"]
    get = "/api/queues/%2F/refusal-q/get"
    assert api.post(get, {"count": 1}).body == {
        "error": "bad_request", "reason": "[{key_missing,ackmode},{key_missing,encoding}]"}
    reply = api.post(get, {"count": 1, "ackmode": "bogus", "encoding": "auto"})
    assert reply.status == 400 and "'ackmode'" in reply.body["reason"]
    reply = api.post(get, {"count": "many", "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert reply.status == 400 and "'count'" in reply.body["reason"]


def test_pagination_refusals(api: Api) -> None:
    assert api.get("/api/queues?page=1&page_size=1000").body == {
        "error": "invalid_pagination_parameters",
        "reason": "Invalid pagination parameters: page number 1, page size 1000"}
    assert api.get("/api/queues?page=0").status == 400
    assert api.get("/api/queues?page=x").status == 400
    assert api.get("/api/queues?page=99").body["error"] == "page_out_of_range"
    assert api.get("/api/queues?page=1&name=(&use_regex=true").status == 400


# --------------------------------------------------------------------------- 404 and 405


@pytest.mark.parametrize("path", [
    "/api/nope", "/api/queues/%2F/none", "/api/queues/no-vhost", "/api/queues/no-vhost/q", "/api/exchanges/%2F/none",
    "/api/vhosts/none", "/api/users/none", "/api/permissions/%2F/none", "/api/policies/%2F/none",
    "/api/connections/none", "/api/channels/none", "/api/bindings/%2F/e/none/q/none",
])
def test_missing_objects_are_404(api: Api, path: str) -> None:
    reply = api.get(path)
    assert reply.status == 404 and reply.body == {"error": "Object Not Found", "reason": "Not Found"}


def test_declaring_in_a_missing_vhost_is_404(api: Api) -> None:
    assert api.put("/api/queues/no-vhost/q").body == {"error": "not_found", "reason": "vhost_not_found"}
    assert api.put("/api/exchanges/no-vhost/x", {"type": "direct"}).body == {
        "error": "not_found", "reason": "vhost_not_found"}


@pytest.mark.parametrize("method,path", [
    ("POST", "/api/overview"), ("PATCH", "/api/queues/%2F/q"), ("DELETE", "/api/queues"),
    ("PUT", "/api/whoami"), ("GET", "/api/queues/%2F/q/get"), ("GET", "/api/exchanges/%2F/amq.direct/publish"),
    ("POST", "/api/users/guest"),
])
def test_methods_a_path_does_not_take_are_405(api: Api, method: str, path: str) -> None:
    reply = api.request(method, path, {} if method != "GET" else None)
    assert reply.status == 405
    assert reply.headers["allow"]


def test_nesting_beyond_the_bound_is_refused(api: Api) -> None:
    """Arguments and headers nest at most 100 levels (cluster/nesting.py), as over AMQP; a
    body nested past what the JSON parser takes is not JSON."""
    deep: object = 1
    for _ in range(101):
        deep = {"a": deep}
    reply = api.put("/api/queues/%2F/too-deep", {"arguments": deep})
    assert reply.status == 400 and "'arguments' is nested too deeply" in reply.body["reason"]
    assert api.get("/api/queues/%2F/too-deep").status == 404
    publish = {"routing_key": "k", "payload": "x", "payload_encoding": "string", "properties": {"headers": deep}}
    reply = api.post("/api/exchanges/%2F/amq.default/publish", publish)
    # The headers sit inside the properties object, one level below it.
    assert reply.status == 400 and "'properties' is nested too deeply (more than 101 levels)" in reply.body["reason"]
    very_deep = b'{"arguments": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert api.put("/api/queues/%2F/too-deep", raw=very_deep).body["reason"].startswith("not_json")
    assert api.post("/api/definitions", raw=b"[" * 100_000 + b"]" * 100_000).body == {
        "error": "bad_request", "reason": "failed_to_parse_json"}
    ok = {"x-ok": 1}
    for _ in range(98):
        ok = {"a": ok}
    assert api.put("/api/queues/%2F/deep-enough", {"arguments": ok}).status == 201
    assert api.get("/api/queues/%2F/deep-enough").status == 200
    api.ok("DELETE", "/api/queues/%2F/deep-enough")
