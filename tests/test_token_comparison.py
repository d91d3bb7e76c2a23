"""Tokens compare in constant time (Jenkins compared webhook signatures byte by byte): however
much of a guess is right, and whichever configured token it is, SPEED does the same comparisons
of equal-length digests. A spy counts the comparisons; everything else is the real app."""
import hmac

import pytest

import bot.auth

TOKENS = ["first-token-of-enough-length", "second-token-of-enough-length", "third-token-0000"]
GUESSES = [
    None, "", "f", "first-token-of-enough-lengtX", "first-token-of-enough-length-and-more",
    TOKENS[0], TOKENS[1], TOKENS[2], "x" * 4000,
]


@pytest.fixture
def comparisons(monkeypatch):
    """The argument lengths of every hmac.compare_digest call bot.auth makes."""
    seen: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(bot.auth.hmac, "compare_digest", spy)
    return seen


@pytest.mark.parametrize("guess", GUESSES)
async def test_api_token_check_does_the_same_work_for_every_guess(make_client, comparisons, guess):
    """Jenkins' non-constant-time compare: API-token guesses of any length and prefix. Asserts:
    404 only for a configured token, else 401; a non-empty guess: one 32/32 compare per token."""
    client = await make_client(auth__api_tokens=TOKENS)
    headers = {} if guess is None else {"Authorization": f"Bearer {guess}"}
    response = await client.post("/cancel/1", headers=headers)
    assert response.status == (404 if guess in TOKENS else 401)
    if guess:  # a missing token is refused before any comparison
        assert comparisons == [(32, 32)] * len(TOKENS)


async def test_deployment_token_check_compares_equal_length_digests(make_client, comparisons):
    """Jenkins' non-constant-time compare, container tokens: 1- and 5000-character guesses at
    /add_results. Asserts: 401, and every comparison is of two digests of one equal length."""
    client = await make_client(auth__api_tokens=TOKENS)
    created = await client.post("/start", json={"url": "http://127.0.0.1:9/x.git", "branch": "m"},
                                headers={"Authorization": f"Bearer {TOKENS[0]}"})
    deployment_id = (await created.json())["id"]
    comparisons.clear()
    for guess in ("a", "b" * 5000):
        response = await client.post(f"/add_results/{deployment_id}", json={"results": "x"},
                                     headers={"Authorization": f"Bearer {guess}"})
        assert response.status == 401
    assert comparisons and all(pair == comparisons[0] for pair in comparisons)
    assert comparisons[0][0] == comparisons[0][1]
