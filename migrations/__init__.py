"""Numbered SQL schema changes, applied in order by `appservice.storage.database.upgrade`.

A shipped file is never edited: a change is a new file. `NNN_name.sql` serves both
backends; `NNN_name.sqlite.sql` / `NNN_name.postgres.sql` hold a dialect variant.
A statement may use the parameter `$1`: the time of the upgrade in milliseconds since
the epoch, which the two dialects have no common SQL for.
"""
