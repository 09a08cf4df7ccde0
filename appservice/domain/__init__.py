"""The domain: requests and their state machine, sign-up, accounts, decisions, the gate,
provisioning, what applicants are told (mail and the catalogue of texts)."""
