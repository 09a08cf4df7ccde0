"""Gatekeeper's process and its edges: config, database, Synapse, mail and the web endpoint."""
