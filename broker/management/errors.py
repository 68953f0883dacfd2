"""The management API's refusals as values, with RabbitMQ 3.10's status codes and JSON.

A handler returns or raises an `ApiError`; the application turns it into the response
RabbitMQ's cowboy handlers give: `{"error": ..., "reason": ...}` with the status.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    status: int
    error: str
    reason: str

    def body(self) -> dict[str, str]:
        return {"error": self.error, "reason": self.reason}


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


# RabbitMQ's answer for a missing object (rabbit_mgmt_util:not_found/3).
NOT_FOUND = ApiError(404, "Object Not Found", "Not Found")


def not_found(reason: str) -> ApiError:
    """A 404 naming what is missing (a vhost on PUT, a queue on bind), as RabbitMQ gives it."""
    return ApiError(404, "not_found", reason)


def not_authorised(reason: str) -> ApiError:
    # RabbitMQ spells it "not_authorized" for a failed login and "not_authorised" for the
    # tag checks; both kept.
    return ApiError(401, "not_authorised", reason)


LOGIN_FAILED = ApiError(401, "not_authorized", "Login failed")
