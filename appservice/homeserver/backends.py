"""The account backend the config chooses: MAS when `homeserver.mas` is set, else Synapse."""

from __future__ import annotations

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.homeserver.account_backend import AccountBackend
from gatekeeper.appservice.homeserver.synapse_admin import SecretStore, SynapseAdmin


def account_backend(config: Config, secret_store: SecretStore) -> AccountBackend:
    homeserver = config.homeserver
    if homeserver.mas is not None:
        from gatekeeper.appservice.homeserver.mas_admin import MasAdmin

        return MasAdmin(homeserver, homeserver.mas, secret_store)
    return SynapseAdmin(homeserver, config.appservice.as_token.get_secret_value(), secret_store)
