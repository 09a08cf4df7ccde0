"""Gatekeeper: sign-ups for a Matrix homeserver, approved by its admins in a Matrix room.

The code lives in the repository's top folders, as docs/architecture.md lays them out:
`appservice/` (the process), `bot/` (the admin room) and `migrations/` (numbered SQL).
This package links to them, so that they install as `gatekeeper.appservice`,
`gatekeeper.bot` and `gatekeeper.migrations` rather than as generic top-level names.
"""
