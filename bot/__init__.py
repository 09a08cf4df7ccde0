"""The admin room: commands and reactions from admins, notices from Gatekeeper."""
