"""Canary secrets and fake Azure credentials shared by the secret tests (unit and integration)."""

from __future__ import annotations

from typing import Any

from azure.core.credentials import AccessToken

CANARY_SQL = "cnry-sql-4b9e21d7"
CANARY_SP = "cnry-sp-90c3aa15"
CANARY_TOKEN = "cnry-tok-6e02f3b8"
CANARY_EH = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=l;SharedAccessKey=cnry-eh-5d7f0b62"
CANARIES = (CANARY_SQL, CANARY_SP, CANARY_TOKEN, "cnry-eh-5d7f0b62")


def leaks(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


class FakeCredential:
    def __init__(self, token: str = CANARY_TOKEN, error: Exception | None = None) -> None:
        self.token, self.error = token, error

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        if self.error is not None:
            raise self.error
        return AccessToken(self.token, 4_102_444_800)


class FakeSecrets:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values

    def get(self, scope: str, key: str) -> str:
        if (scope, key) not in self.values:
            raise RuntimeError(f"Secret does not exist with scope: {scope} and key: {key}")
        return self.values[(scope, key)]


class FakeDBUtils:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.secrets = FakeSecrets(values)
