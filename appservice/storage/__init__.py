"""Storage: the database and its migration runner, sessions, TOTP secrets, rate limits,
bot state, and the encryption of stored secrets."""
