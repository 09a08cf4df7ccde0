"""Secrets at rest: rotation keeps old rows readable; tampering fails closed."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from gatekeeper.appservice.config import SecurityConfig
from gatekeeper.appservice.storage.crypto import SecretBox, TamperedSecret


def box(*keys: bytes) -> SecretBox:
    return SecretBox(SecurityConfig(encryption_keys=[SecretStr(k.decode()) for k in keys]))


def test_round_trip_and_no_plaintext() -> None:
    key = Fernet.generate_key()
    ciphertext = box(key).encrypt("hunter2 🦄")
    assert "hunter2" not in ciphertext
    assert box(key).decrypt(ciphertext) == "hunter2 🦄"


def test_rotation_keeps_old_rows_readable() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    stored = box(old).encrypt("secret")
    rotated = box(new, old)
    assert rotated.decrypt(stored) == "secret"
    assert box(new).decrypt(rotated.encrypt("secret")) == "secret"


def test_tampered_or_unknown_key_fails_closed() -> None:
    key = Fernet.generate_key()
    stored = box(key).encrypt("secret")
    tampered = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    with pytest.raises(TamperedSecret):
        box(key).decrypt(tampered)
    with pytest.raises(TamperedSecret):
        box(Fernet.generate_key()).decrypt(stored)
