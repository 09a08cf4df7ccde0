"""The homeserver edge: Synapse's admin API and the appservice listener."""
