"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz_hooks) for tests/test_fuzz.py.

Every generated request carries the fuzz account's session, sudo and CSRF cookies, the
matching X-CSRF-Token header and the admin API's bearer token (as the manager's Basic
credentials on the seed's /registrations/{rid}/), all read from the JSON
file named by GATEKEEPER_FUZZ_SETTINGS. Operations that end the session (logout) or
change the password are fuzzed too: the hooks follow the new password and log back in,
so one lucky request does not leave the rest of the run knocking at a closed door.
Each answer is appended to a log the test reads to prove every endpoint was reached.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import requests
import schemathesis

SETTINGS_VARIABLE = "GATEKEEPER_FUZZ_SETTINGS"
CSRF_COOKIE = "CSRF-Token"
CSRF_HEADER = "X-CSRF-Token"
# The answers that mean "these credentials no longer hold" rather than "bad input".
LOST_CREDENTIALS = {"GK_NOT_LOGGED_IN", "GK_SUDO_REQUIRED", "GK_CSRF"}


def errcode_of(response: schemathesis.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("errcode") if isinstance(body, dict) else None


class FuzzCredentials:
    """The cookies every request carries, renewed by logging in again when lost."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.base_url: str = settings["baseUrl"]
        self.email: str | None = settings.get("email")
        self.password: str | None = settings.get("password")
        self.admin_token: str | None = settings.get("adminToken")
        self.cookies: dict[str, str] = settings["cookies"]
        self.answer_log = Path(settings["answerLog"])
        self.lock = threading.Lock()

    def apply(self, case: schemathesis.Case) -> None:
        with self.lock:
            cookies = dict(self.cookies)
        case.cookies = {**(case.cookies or {}), **cookies}
        headers = {**(case.headers or {}), CSRF_HEADER: cookies[CSRF_COOKIE]}
        if self.admin_token is not None:
            headers["Authorization"] = f"Bearer {self.admin_token}"
            rid = (case.path_parameters or {}).get("rid")
            if rid is not None:
                # The seed's /registrations/{rid}/: HTTP Basic rid:token, as its manager.
                pair = f"{rid}:{self.admin_token}".encode("utf-8", "surrogateescape")
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        case.headers = headers

    def after(self, case: schemathesis.Case, response: schemathesis.Response) -> None:
        errcode = errcode_of(response)
        self.record(case, response.status_code, errcode)
        path, succeeded = case.operation.path, 200 <= response.status_code < 300
        if path == "/api/user/settings/sensitive/change-password" and succeeded:
            assert isinstance(case.body, dict)
            with self.lock:
                self.password = case.body["newPassword"]
        if (path == "/api/auth/logout" and succeeded) or errcode in LOST_CREDENTIALS:
            self.renew(used=case.cookies or {})

    def record(self, case: schemathesis.Case, status: int, errcode: str | None) -> None:
        line = json.dumps(
            {
                "method": case.method,
                "path": case.operation.path,
                "status": status,
                "errcode": errcode,
            }
        )
        with self.lock, self.answer_log.open("a") as log:
            log.write(line + "\n")

    def renew(self, used: dict[str, Any]) -> None:
        """Log in and take sudo again, unless another worker already has since `used`."""
        with self.lock:
            if self.email is None or used.get(CSRF_COOKIE) != self.cookies[CSRF_COOKIE]:
                return
            self.cookies = self.log_in(self.email, self.password or "")

    def log_in(self, email: str, password: str) -> dict[str, str]:
        with requests.Session() as http:
            csrf = http.get(f"{self.base_url}/api/csrf", timeout=30).json()["csrfToken"]
            login = http.post(
                f"{self.base_url}/api/auth/login",
                json={"email": email, "password": password},
                headers={CSRF_HEADER: csrf},
                timeout=30,
            )
            assert login.json() == {"status": "logged-in"}, login.text
            sudo = http.post(
                f"{self.base_url}/api/user/settings/sudo",
                json={"password": password},
                headers={CSRF_HEADER: http.cookies[CSRF_COOKIE]},
                timeout=30,
            )
            assert sudo.json() == {"success": True}, sudo.text
            return dict(http.cookies.items())


CREDENTIALS = FuzzCredentials(json.loads(Path(os.environ[SETTINGS_VARIABLE]).read_text()))


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    CREDENTIALS.apply(case)


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    CREDENTIALS.after(case, response)
