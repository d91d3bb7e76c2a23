"""A deployment runs end to end: clone, build, run, output recorded, Succeeded."""
from tests.conftest import results_of, wait_finished


async def test_deploys_and_records_output(client, repo):
    url, commit = repo("echo hello from the container\n")
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201
    deployment_id = (await response.json())["id"]
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert info["commit"] == commit
    assert "hello from the container" in results
