"""Alerts and audit: the configuration auditor (robot settings changes to the audit log
and syslog), certificate expiration, the password change report and the expiration
notification. No Prefect imports: the Prefect layer passes in what it reads from Prefect."""
