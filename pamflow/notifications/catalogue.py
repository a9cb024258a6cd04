"""The notification catalogue as data: every type of ``../shared/seeds`` 002 (Appendix II,
"Notifications that can be sent by e-mail") and 003 (the newer "Notification Options"), plus
the few pamflow adds for its own robots.

Each row: family, name, severity, source, description. ``source`` says where the name comes
from: ``"002 003"`` (both documents), ``"002"`` (the older document only), ``"003"`` (the
newer only) or ``"pamflow"``. Where 003 renamed a 002 type both names are kept:
:data:`RENAMED` maps the older name to the newer one, and each type's ``newer`` / ``older``
fields say it. Both names can be queued and routed; a route on either name matches both.

Templates (subject, text, HTML) live in :mod:`pamflow.notifications.templates`; a type
without its own template is rendered by its family's generic one.
"""

from __future__ import annotations

from dataclasses import dataclass

# severities, lowest first
SEVERITIES = ("info", "notice", "warning", "critical")


@dataclass(frozen=True)
class NotificationType:
    name: str
    family: str
    description: str
    severity: str = "info"
    source: str = "002 003"
    newer: str | None = None  # the 003 name that replaces this 002 name
    older: str | None = None  # the 002 name this 003 name replaces

    @property
    def names(self) -> tuple[str, ...]:
        """This name and its renamed twin (routes and ``list --type`` match both)."""
        return tuple(n for n in (self.name, self.newer, self.older) if n)


I, N, W, C = SEVERITIES  # noqa: E741 - short on purpose: the table below stays readable
B, OLD, NEW, OWN = "002 003", "002", "003", "pamflow"

# (family, name, severity, source, description)
_ROWS: list[tuple[str, str, str, str, str]] = [
    # -- Access control: the workflow (approval) process
    ("Access control", "Founded request", I, OLD,
     "A new approval request has been made by a user. Approvers will receive an email with details"),
    ("Access control", "Created request", I, NEW,
     "A new approval request has been made by a user. Approvers will receive an email with details"),
    ("Access control", "Request approved", I, B, "Some approver user has accepted the request"),
    ("Access control", "Request Disapproved", N, B, "Some approver user has rejected the request"),
    ("Access control", "Request revoked", N, NEW,
     "Some user of type approver revoked the order and the user who requested it will receive a "
     "notification with the reason for the revocation"),
    ("Access control", "Approver management", I, NEW, "A user has been registered as an approver"),
    # -- Audit trail
    ("Audit trail", "Audit trail", I, B,
     "When a major entity is created, updated, or inactivated, a detailed log is registered and can "
     "also be notified"),
    # -- Authentication
    ("Authentication", "Authentication messages", N, B,
     "When a user is authenticated or some authentication process fails"),
    ("Authentication", "MFA will be ignored for this user", W, NEW, "When using MFA is disabled"),
    ("Authentication", "MFA won't be ignored for this user", I, NEW, "When using MFA is enabled"),
    # -- Certificates (Certificate Manager)
    ("Certificates", "Certificate bond with device", I, B, "When a certificate is configured into a device"),
    ("Certificates", "Certificate creation", I, B,
     "When a certificate is created. Can be triggered by automatically issue or manual import"),
    ("Certificates", "Certificate expiration alert: Today", C, B, "Some certificates will be expired today"),
    ("Certificates", "Certificate expiration alert: 1 day", C, B,
     "Some certificates will be expired on 1 day"),
    ("Certificates", "Certificate expiration alert: 7 days", W, B,
     "Some certificates will be expired on 7 days"),
    ("Certificates", "Certificate expiration alert: 30 days", W, B,
     "Some certificates will be expired on 30 days"),
    ("Certificates", "Certificate expiration warning: 15 days", W, B,
     "Some certificates will be expired on 15 days"),
    ("Certificates", "Certificate expiration warning: 60 days", N, B,
     "Some certificates will be expired on 60 days"),
    ("Certificates", "Certificate expiration warning: 90 days", N, B,
     "Some certificates will be expired on 90 days"),
    ("Certificates", "Certificate password view", W, B,
     "Some user has viewed the certificate password on plain-text"),
    ("Certificates", "Certificate renewal", I, B, "A certificate has been renewed at targets devices"),
    ("Certificates", "Certificate revocation", W, B, "A certificate has been revoked at targets devices"),
    ("Certificates", "Download", N, B,
     "Some user has downloaded a certificate. This certificate can be a valid and published one, an "
     "old one or even a unused certificate"),
    ("Certificates", "Publish profile management", I, B,
     "A publish profile configuration has been created or changed"),
    ("Certificates", "Request management", I, B, "A certificate request CSR has been created or changed"),
    ("Certificates", "Request password view", W, B, "A certificate request CSR password has been viewed"),
    # -- Cloud
    ("Cloud", "IAM session without owner", W, NEW, "When a session in a cloud account has no owner"),
    ("Cloud", "IAM key view without owner", W, NEW,
     "When an IAM key preview occurs in a cloud account that has no owner"),
    # -- Command audit (SSH proxy)
    ("Command audit", "Command detected - Allow", I, B, "Some user has executed an audited command"),
    ("Command audit", "Command detected - Block", W, B,
     "Some user has tried to execute an audited command configured to be blocked"),
    ("Command audit", "Command detected - Block and interrupt session", C, OLD,
     "Some user has tried to execute an audited command configured to be blocked. His session was "
     "immediately interrupted"),
    ("Command audit", "Command detected - Block and interrupt a session", C, NEW,
     "Some user has tried to execute an audited command configured to be blocked. His session was "
     "immediately interrupted"),
    ("Command audit", "Command detected - High Urgency", C, OLD,
     "Some user has tried to execute an audited command configured with high score"),
    ("Command audit", "Command detected - High Criticality", C, NEW,
     "Some user has tried to execute an audited command configured with high score"),
    ("Command audit", "Command detected - Medium Urgency", W, OLD,
     "Some user has tried to execute an audited command configured with medium score"),
    ("Command audit", "Command detected - Medium Criticality", W, NEW,
     "Some user has tried to execute an audited command configured with medium score"),
    ("Command audit", "Command detected - Low Urgency", N, OLD,
     "Some user has tried to execute an audited command configured with low score"),
    ("Command audit", "Command detected - Low Criticality", N, NEW,
     "Some user has tried to execute an audited command configured with low score"),
    # -- Credentials
    ("Credentials", "Credential Owner configuration", I, B,
     "Some credential has been created or changed to has a dedicated owner"),
    ("Credentials", "Password changed", I, B,
     "Some credential has it password changed manually or by Execution module template"),
    ("Credentials", "Password daily summary", I, B, "A report with credentials operations summary"),
    ("Credentials", "Password Expired", W, B, "A report with credentials with expired password"),
    ("Credentials", "Password Viewed", N, B,
     "A report with credentials that has been requested by users to see its plain-text passwords"),
    ("Credentials", "Password confirmed", I, NEW, "A report with credentials with passwords confirmed"),
    ("Credentials", "Invalid password", W, NEW, "A report with credentials with invalid passwords"),
    ("Credentials", "Password change reminder", N, OWN,
     "A credential's password is due to change soon (sapm passwordchangereminderjob)"),
    ("Credentials", "Password reservation", I, OWN, "A future-date password reservation started or ended"),
    ("Credentials", "Expiration notification", N, OWN,
     "Passwords and certificates close to expiration (the daily expiration notification robot)"),
    ("Users", "User notification before lock", N, OWN,
     "Notifying inactive users before lock (and temporary users before they expire)"),
    # -- Devices
    ("Devices", "Lost of connectivity", C, B, "Devices that lost connectivity over the configured ports"),
    ("Devices", "Reestabilished Connectivity", I, OLD,
     "Devices that recovery connectivity after been flagged as connectivity lost"),
    ("Devices", "Connectivity restored", I, NEW,
     "Devices that recovery connectivity after been flagged as connectivity lost"),
    ("Devices", "Batch import finished", I, OWN, "A spreadsheet import of devices and credentials ended"),
    # -- Domum (remote access portal)
    ("Domum", "New location", N, NEW, "Some user made Domum login from a new geoip location"),
    ("Domum", "Unexpected location", W, NEW,
     "Some user tried to access Domum from an unauthorized geoip location"),
    ("Domum", "Panic Button", C, NEW, "When the panic button was pressed"),
    ("Domum", "Domum health check", I, NEW, "Status on the health of access to Domum"),
    # -- Emergency panel
    ("Emergency panel", "Terminate sessions", C, NEW, "When the emergency button has been pressed"),
    ("Emergency panel", "Lockdown started", C, NEW, "When Lockdown was started on the system"),
    ("Emergency panel", "Lockdown finished", W, NEW, "When Lockdown was finished in the system"),
    ("Emergency panel", "Freezing started", C, NEW, "When Freezing was started on the system"),
    ("Emergency panel", "Freezing finished", W, NEW, "When Freezing was finished in the system"),
    # -- Master key
    ("Master key", "Failed recovery attempt", C, NEW,
     "When the user tries to recover the backup and an error occurs"),
    ("Master key", "Successful recovery attempt", W, NEW, "When the user successfully recovered the backup"),
    # -- Monitoring (server resources)
    ("Monitoring", "CPU Usage - Critical", C, B, "CPU is running over 90% usage over 10 minutes"),
    ("Monitoring", "CPU Usage - High", W, B, "CPU is running over 70% usage over 10 minutes"),
    ("Monitoring", "Daily report of change of passwords", I, B,
     "A report with credentials operations summary"),
    ("Monitoring", "Low disk space - High Urgency", C, OLD, "Storage is running under 10% of free space"),
    ("Monitoring", "Low disk space - High criticality", C, NEW, "Storage is running under 10% of free space"),
    ("Monitoring", "Low disk space - Medium Urgency", W, OLD, "Storage is running under 20% of free space"),
    ("Monitoring", "Low disk space - Medium criticality", W, NEW,
     "Storage is running under 20% of free space"),
    ("Monitoring", "Low disk space - Low Urgency", N, OLD, "Storage is running under 30% of free space"),
    ("Monitoring", "Low disk space - Low criticality", N, NEW, "Storage is running under 30% of free space"),
    ("Monitoring", "Memory Usage - Critical", C, B, "RAM is running over 90% usage over 10 minutes"),
    ("Monitoring", "Memory Usage - High", W, B, "RAM is running over 70% usage over 10 minutes"),
    ("Monitoring", "Space disk - Daily notification", I, B, "Storage usage daily report"),
    ("Monitoring", "CPU Usage - Back to normal", I, OWN,
     "CPU usage went back under the high level after a high or critical episode"),
    ("Monitoring", "Memory Usage - Back to normal", I, OWN,
     "RAM usage went back under the high level after a high or critical episode"),
    ("Monitoring", "Service state changed", W, OWN,
     "A part of the platform became ACTIVE, INACTIVE or DISABLED"),
    ("Monitoring", "Listener state changed", W, OWN,
     "A watched TCP listener changed state, e.g. LISTEN to CLOSED"),
    ("Monitoring", "Primary key near its maximum", W, OWN,
     "A primary key of the store is close to the largest value of its type"),
    ("Monitoring", "Backup not fresh", W, OWN,
     "No backup is configured, or the newest backup file is missing or older than allowed"),
    ("Monitoring", "Scheduled robot problem", W, OWN,
     "A robot's run is late, missing, stuck Running or crashed"),
    ("Monitoring", "Alarm opened", W, OWN,
     "An alarm definition's condition held for its duration: an alarm opened"),
    ("Monitoring", "Tunnel failed", C, OWN,
     "A connector's tunnel had no heartbeat within its interval (tunnelheartbeatcheckjob)"),
    ("Monitoring", "Tunnel restored", I, OWN, "A connector's tunnel that had failed answers again"),
    ("Monitoring", "User downloaded the PDF with system dashboard", N, B,
     "Some user has downloaded a dashboard as PDF. This alert exists to make clear that some data has "
     "exported by some user"),
    # -- Password backup
    ("Password backup", "Backup performed", I, B,
     "A privileged information backup has been made using the master key. This backup execution can be "
     "executed automatically by system schedule, or manually by user request"),
    ("Password backup", "Ceremony process completed", N, OLD, "A master key ceremony has been made"),
    ("Password backup", "Ceremony process started", N, OLD, "A master key ceremony has been started"),
    ("Password backup", "Error on backup", C, B, "An error occurred during a privileged information backup"),
    ("Password backup", "User downloaded the PDF with his part of the key", W, OLD,
     "Some Master Key Fraction Guardian has downloaded its own key fraction as PDF document"),
    ("Password backup", "User has seen his part of the key", W, OLD,
     "Some Master Key Fraction Guardian has viewed its own key fraction as plain-text"),
    # -- Password operation (the Execution module: pamflow's operation executor)
    ("Password operation", "Activation executed", I, B,
     "A credential has been activated into target device by Execution module"),
    ("Password operation", "Change Executed", I, B,
     "A credential has taken its password changed into target device by Execution module"),
    ("Password operation", "Error on activation", C, B,
     "An error occurred when tried to activate into target device by Execution module"),
    ("Password operation", "Error on change", C, B,
     "An error occurred when tried to change password into target device by Execution module"),
    # -- Protected information
    ("Protected information", "Information changed", I, B, "Some protected information has been changed"),
    ("Protected information", "Information expired", W, B, "Some protected information has expired"),
    ("Protected information", "Information viewed", N, B,
     "Some user requested protected information data. This user had access to its password, file or "
     "content"),
    # -- Remote session (proxy)
    ("Remote session", "Generate video for download", I, B, "Some user requested MP4 video generate"),
    ("Remote session", "Indexed text session", I, B, "The proxy finished to index a session's texts"),
    ("Remote session", "Session file modified", C, B, "A session had its audit source file changed"),
    ("Remote session", "Session started", I, B, "A proxy session is started"),
    ("Remote session", "Session terminated", I, B, "A proxy session is finished"),
    ("Remote session", "Video scheduled for download", I, B, "The requested video generate has finished"),
    ("Remote session", "High Risk Session", C, NEW, "It was identified a high-risk session"),
    # -- Schedule reports
    ("Schedule reports", "Report scheduling - Creation", I, NEW, "When a report schedule was created"),
    ("Schedule reports", "Report scheduling - Update", I, NEW, "When a report schedule has been updated"),
    ("Schedule reports", "Report scheduling - Deletion", N, NEW, "When a report schedule has been deleted"),
    # -- User behavior
    ("User behavior", "Access unusual credential", W, NEW,
     "Some user is requesting a plain text view of an unusual credential for them"),
    ("User behavior", "Access unusual origin", W, B,
     "A proxy session started by some user from an unusual origin for that user or credential"),
    ("User behavior", "Access unusual target", W, NEW, "A proxy session to a target unusual for that user"),
    ("User behavior", "Access with unusual average length", W, B,
     "A proxy session with a unusual duration time for that user or credential"),
    ("User behavior", "Accesses at unusual time", W, B,
     "A proxy session with a unusual starting time for that user or credential"),
    ("User behavior", "Excessive number of accesses", W, OLD,
     "Some credential are been requested more than the usual. Or some user is requesting credentials "
     "more than usual"),
    ("User behavior", "Unusual accesses", W, OLD,
     "Some device is been accessed into an unusual time, user or IP"),
    ("User behavior", "Excessive views", W, OLD,
     "Some credential is been requested as plain-text more than the usual"),
    ("User behavior", "Views on unusual time", W, OLD,
     "Some credential is been requested as plain-text into unusual date time"),
    ("User behavior", "Unusual credential views", W, OLD,
     "Some user is requesting plain-text view of an unusual credential for him"),
    ("User behavior", "View unusual credential", W, NEW,
     "Some user is requesting plain-text view of an unusual credential for him"),
    ("User behavior", "Views with unusual origin", W, OLD,
     "Some user is requesting plain-text view of an unusual origin IP"),
    ("User behavior", "View unusual origin", W, NEW,
     "Some user is requesting plain-text view of an unusual origin IP"),
    ("User behavior", "Unusual password change", W, NEW, "A password change unusual for that credential"),
    ("User behavior", "New geoip location login", N, OLD,
     "Some user made Domum login from a new geoip location"),
    ("User behavior", "Unauthorized geoip login attempt", W, OLD,
     "Some user tried to access Domum from an unauthorized geoip location"),
    # -- Workstation (the Windows/Linux agent; 002 calls it senhasegura.go, 003 Segura.go)
    ("Workstation", "Alert", W, NEW, "System alert messages related to errors"),
    ("Workstation", "Application completed", I, B, "An impersoned application execution has ended"),
    ("Workstation", "Application started", I, B, "An impersoned application execution started"),
    ("Workstation", "Application malware analysis", W, NEW, "An application was analysed for malware"),
    ("Workstation", "Control panel", I, B, "An impersoned control panel applet has been accessed"),
    ("Workstation", "Copy password", N, B, "A credential password has been copied"),
    ("Workstation", "Credential use for network access", I, B,
     "A credential has been used to access a network sharing"),
    ("Workstation", "Directory and file scan - Change", I, B,
     "The directory and file scan changed some permission policies based on backoffice configuration"),
    ("Workstation", "Directory and file scan - Exclusion", I, B,
     "The directory and file scan removed some permission policies based on backoffice configuration"),
    ("Workstation", "Directory and file scan - Inclusion", I, B,
     "The directory and file scan added some permission policies based on backoffice configuration"),
    ("Workstation", "Download of senhasegura.go version performed", I, OLD,
     "The agent client has downloaded a new version from backoffice"),
    ("Workstation", "Download of Segura.go version performed", I, NEW,
     "The agent client has downloaded a new version from backoffice"),
    ("Workstation", "Error retrieving credentials", W, B,
     "An error occurred when the agent client tried to request the user credential list"),
    ("Workstation", "Go offline", N, B, "The user requested to start the agent's offline mode"),
    ("Workstation", "Go online", I, B, "The user requested to stop the agent's offline mode"),
    ("Workstation", "Macro", I, B, "A macro was executed by some user"),
    ("Workstation", "Network Adapter", I, B, "A network adapter settings applet was accessed by some user"),
    ("Workstation", "Network share", I, B, "A network share path has been registered by some user"),
    ("Workstation", "New senhasegura.go version", I, OLD, "A new agent version is available at backoffice"),
    ("Workstation", "New Segura.go version", I, NEW, "A new agent version is available at backoffice"),
    ("Workstation", "Runas", I, B, "An impersoned application execution started from Windows context menu"),
    ("Workstation", "senhasegura.go version approved", I, OLD,
     "The MSI installer has been approved by administrator to be installed automatically from the agent"),
    ("Workstation", "Segura.go version approved", I, NEW,
     "The MSI installer has been approved by administrator to be installed automatically from the agent"),
    ("Workstation", "senhasegura.go version disabled", N, OLD,
     "The MSI installer has been rejected by administrator to be installed automatically from the agent"),
    ("Workstation", "Segura.go version disabled", N, NEW,
     "The MSI installer has been rejected by administrator to be installed automatically from the agent"),
    ("Workstation", "senhasegura.go version installed", I, OLD,
     "Some workstation has installed the new version and reported to backoffice"),
    ("Workstation", "Segura.go version installed", I, NEW,
     "Some workstation has installed the new version and reported to backoffice"),
    ("Workstation", "Uninstall", N, B, "The user uninstalled some application using the agent's elevation"),
    ("Workstation", "Untrusted DLL", C, OLD,
     "The user tried to execute an application that has a DLL considered as untrusted"),
    ("Workstation", "Untrusted DLL execution attempt", C, NEW,
     "The user tried to execute an application that has a DLL considered as untrusted"),
    ("Workstation", "User", I, B, "The workstation local user has been approved to use the agent"),
    ("Workstation", "Using UAC", N, B, "The user used the agent to authenticate Windows UAC prompt"),
    ("Workstation", "View password", N, B, "The user viewed the credential password as plain-text"),
    ("Workstation", "Workstation approved", I, B, "The workstation has been approved to use the agent"),
    ("Workstation", "Workstation registration", I, B,
     "The workstation requested authorization to use the agent"),
    # -- pamflow's own
    ("Mail", "MFA token", N, OWN, "A one-time token requested for a second factor, mailed to its user"),
    ("Mail", "Bulk mail", I, OWN, "A message an administrator sends to a group of users"),
]

# older (002) name -> newer (003) name, where 003 renamed a type
RENAMED: dict[str, str] = {
    "Founded request": "Created request",
    "Command detected - Block and interrupt session": "Command detected - Block and interrupt a session",
    "Command detected - High Urgency": "Command detected - High Criticality",
    "Command detected - Medium Urgency": "Command detected - Medium Criticality",
    "Command detected - Low Urgency": "Command detected - Low Criticality",
    "Reestabilished Connectivity": "Connectivity restored",
    "Low disk space - High Urgency": "Low disk space - High criticality",
    "Low disk space - Medium Urgency": "Low disk space - Medium criticality",
    "Low disk space - Low Urgency": "Low disk space - Low criticality",
    "Unusual credential views": "View unusual credential",
    "Views with unusual origin": "View unusual origin",
    "New geoip location login": "New location",
    "Unauthorized geoip login attempt": "Unexpected location",
    "Download of senhasegura.go version performed": "Download of Segura.go version performed",
    "New senhasegura.go version": "New Segura.go version",
    "senhasegura.go version approved": "Segura.go version approved",
    "senhasegura.go version disabled": "Segura.go version disabled",
    "senhasegura.go version installed": "Segura.go version installed",
    "Untrusted DLL": "Untrusted DLL execution attempt",
}
_NEWER_OF_OLDER = {v: k for k, v in RENAMED.items()}


def _build() -> dict[str, NotificationType]:
    out: dict[str, NotificationType] = {}
    for family, name, severity, source, description in _ROWS:
        if name in out:
            raise ValueError(f"notification type {name!r} listed twice")
        out[name] = NotificationType(name, family, description, severity, source,
                                     newer=RENAMED.get(name), older=_NEWER_OF_OLDER.get(name))
    for old, new in RENAMED.items():
        if old not in out or new not in out:
            raise ValueError(f"rename {old!r} -> {new!r} names a type not in the catalogue")
    return out


CATALOGUE: dict[str, NotificationType] = _build()
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.family for t in CATALOGUE.values()))
