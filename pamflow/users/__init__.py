"""User lifecycle (seed 001): the user eligibility check and the user notification before
lock. See :mod:`.lifecycle`."""

from .lifecycle import (
    LifecycleSettings,
    LockNotice,
    UserChange,
    UserLifecycleError,
    check_eligibility,
    lock_notice_text,
    notify_before_lock,
    settings_from_parameters,
)

__all__ = ["LifecycleSettings", "LockNotice", "UserChange", "UserLifecycleError",
           "check_eligibility", "lock_notice_text", "notify_before_lock",
           "settings_from_parameters"]
