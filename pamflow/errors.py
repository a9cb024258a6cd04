"""The root of the errors pamflow raises on purpose.

Every error a caller is meant to handle derives from :class:`PamflowError`, so a robot, the
CLI or the gateway can tell "pamflow refused this, here is why" from a bug. The message of
every one of them names what is at fault (device, account, step, file, row, setting) and
never a secret. Each family keeps its own subclasses beside its code:

- ``pamflow.vault.VaultError`` (and ``NoMasterKey``, ``RekeyRefused``)
- ``pamflow.targets.base.TargetError`` (``AuthenticationFailed``, ``Unreachable``,
  ``HostKeyChanged``, ``ChangeRefused``, ...)
- ``pamflow.operations.queue.QueueError``
- ``pamflow.inventory.ImportFileError``
- ``pamflow.webhooks.schemas.PayloadError`` / ``BodyError``, ``pamflow.webhooks.sources.SourceError``
- ``pamflow.webhooks.app.Refused`` (a call answered with a 4xx/5xx instead of accepted)
- ``pamflow.passwords.PolicyError``, ``pamflow.hostkeys.HostKeyError``,
  ``pamflow.notifications.UnknownNotification``, ``pamflow.platform.AuthFileError``
- ``pamflow.directory.DirectoryError`` (``DirectorySettingsError``, ``DirectoryNotConfigured``,
  ``DirectoryUnavailable``, ``DirectoryBindRefused``, ``DirectorySearchFailed``,
  ``BindSecretMissing``, ``DeviceDatabaseError``)
- ``pamflow.monitors.MonitorError`` (``SettingsError``; ``alarms.AlarmError``,
  ``maintenance.MaintenanceError``)
- ``pamflow.backup.BackupError`` (``BackupKeyError``, ``BackupRefused``, ``RestoreRefused``,
  ``ExportError``, ``HostKeyRefused``)
- ``pamflow.notifications``: ``NotificationContextError`` (a secret, too big, not JSON),
  ``TemplateError``, ``routing.RouteError``, ``channels.DeliveryError``,
  ``secrets.SecretMissing``, ``mfa.MfaError``
- ``pamflow.models.NotStored`` (a row without an id where a stored one is needed),
  ``pamflow.credentials.store.PromoteRefused``, ``pamflow.connectivity.BatchesFailed``
- ``pamflow.syslog.SyslogError`` (a syslog target misconfigured or unreachable),
  ``pamflow.alerts.certificates.CertificateReadError`` (a device's TLS port unreadable)
- ``pamflow.purge.RetentionError`` (a retention setting or purge refused),
  ``pamflow.audit_seal.SealError`` (the audit log cannot be sealed or moved),
  ``pamflow.users.UserLifecycleError``
- ``pamflow.cloud.CloudError`` (a cloud account that cannot be listed: nothing written),
  ``pamflow.vault_entries.VaultEntryError``, ``flows.cloud.CloudImportFailed``
"""

from __future__ import annotations


class PamflowError(Exception):
    """Something pamflow refused or could not do, with the reason in the message."""


__all__ = ["PamflowError"]
