"""Matrix user IDs: the localpart grammar Gatekeeper accepts and how a user ID is written.

Every check of a username and every `@localpart:domain` comes from here, so the sign-up
form, the config, the Synapse client and the OpenAPI document cannot disagree.
"""

from __future__ import annotations

import re

# Synapse's rule for new localparts (RegistrationHandler.check_username), as the
# characters of a regex class.
LOCALPART_CHARS = r"a-z0-9._=\-/+"
LOCALPART_RE = re.compile(rf"^[{LOCALPART_CHARS}]+$")
LOCALPART_RULE = "a-z, 0-9 and . _ = - / +"
# The Matrix spec's limit on a whole user ID, in bytes.
MAX_USER_ID_BYTES = 255


def user_id(localpart: str, domain: str) -> str:
    """`@localpart:domain`."""
    return f"@{localpart}:{domain}"


def max_localpart_bytes(domain: str) -> int:
    """The longest localpart whose user ID on `domain` stays within MAX_USER_ID_BYTES."""
    return MAX_USER_ID_BYTES - len(user_id("", domain).encode())


def user_id_fits(localpart: str, domain: str) -> bool:
    return len(user_id(localpart, domain).encode()) <= MAX_USER_ID_BYTES
