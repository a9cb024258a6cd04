"""The directory family's errors: each names the directory (or database), the step and the
reason, never a secret."""

from __future__ import annotations

from pamflow.errors import PamflowError


class DirectoryError(PamflowError):
    """A directory robot refused to run or could not finish; nothing was written."""


class DirectorySettingsError(DirectoryError):
    """The saved settings (block) cannot be used as they are: the message says which field."""


class DirectoryNotConfigured(DirectorySettingsError):
    """No settings (block) of that name exist: the robot has nothing to do."""


class DirectoryUnavailable(DirectoryError):
    """The directory could not be reached, or its TLS could not be established safely."""


class DirectoryBindRefused(DirectoryError):
    """The directory refused the bind account's credentials."""


class DirectorySearchFailed(DirectoryError):
    """A search failed part way (the directory answered an error): nothing was written."""


class BindSecretMissing(DirectoryError):
    """The vault holds no usable secret under the name the settings reference."""


class DeviceDatabaseError(DirectoryError):
    """The external device database refused the query, or the query is not a read."""
