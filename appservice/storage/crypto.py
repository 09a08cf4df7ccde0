"""Secrets at rest: MultiFernet over the configured keys (the first encrypts, all decrypt)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gatekeeper.appservice.config import SecurityConfig


class TamperedSecret(Exception):
    """Ciphertext that no configured key opens: altered, or its key was removed."""


class SecretBox:
    def __init__(self, config: SecurityConfig) -> None:
        self._fernet = MultiFernet(
            [Fernet(key.get_secret_value()) for key in config.encryption_keys]
        )

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise TamperedSecret("stored secret cannot be decrypted") from None
