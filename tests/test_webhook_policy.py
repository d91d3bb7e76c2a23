"""Unsigned webhooks: taken only when nothing but this machine can reach SPEED."""
import logging

import pytest

from tests.webhooks import delivery_headers, encode, fake_sha, ping_payload, push_payload

TOKEN = "an-api-token-of-enough-length"
ATTACKER = "http://127.0.0.1:9/attacker.git"  # an allowed URL: the push would clone it
RULES = [{"match": "acme/*"}]


async def forged_push(client):
    """An unsigned push for a configured repository, cloning the attacker's URL."""
    body = encode(push_payload("acme/app", ATTACKER, after=fake_sha("attacker")))
    return await client.post("/webhook", data=body,
                             headers=delivery_headers("push", body, secret=None))


async def deployments(client) -> list:
    response = await client.get("/deployments", headers={"Authorization": f"Bearer {TOKEN}"})
    return (await response.json())["deployments"]


@pytest.mark.parametrize("settings", [
    {"auth__api_tokens": [TOKEN]},  # loopback behind a proxy: the README's own set-up
    {"server__public_url": "https://speed.example.com"},  # a proxy in front, no tokens
    {"server__public_url": "http://speed.internal:8080"},
], ids=["api tokens", "https public_url", "non-loopback public_url"])
async def test_unsigned_pushes_are_refused_once_speed_is_exposed(make_client, caplog, settings):
    """Attack: a forged push with an attacker's clone_url for a configured repository, sent to a
    loopback SPEED without a webhook secret that a proxy exposes. Asserts: 403, nothing recorded,
    and start-up said webhooks are refused."""
    caplog.set_level(logging.INFO)
    client = await make_client(repos=RULES, **settings)
    response = await forged_push(client)
    assert response.status == 403
    assert "webhook_secret" in (await response.json())["error"]
    assert await deployments(client) == []
    assert any("webhooks are refused" in r.getMessage() for r in caplog.records)


async def test_a_loopback_only_speed_accepts_unsigned_webhooks(make_client, caplog):
    """The plain default (loopback, no tokens, loopback public_url) takes unsigned deliveries,
    and says so at start-up."""
    caplog.set_level(logging.INFO)
    client = await make_client(repos=RULES, server__public_url="http://localhost:8080")
    body = encode(ping_payload())
    response = await client.post("/webhook", data=body,
                                 headers=delivery_headers("ping", body, secret=None))
    assert (response.status, (await response.json())["message"]) == (200, "pong")
    assert (await forged_push(client)).status == 202
    assert any("webhooks are accepted unsigned" in r.getMessage() for r in caplog.records)


async def test_with_a_secret_start_up_says_signatures_are_checked(make_client, caplog):
    caplog.set_level(logging.INFO)
    client = await make_client(github__webhook_secret="a-webhook-secret", auth__api_tokens=[TOKEN])
    assert (await forged_push(client)).status == 401
    assert any("signatures are checked" in r.getMessage() for r in caplog.records)
