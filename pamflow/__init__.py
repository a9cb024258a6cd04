"""pamflow: the background robots of a privileged-access-management platform."""

__version__ = "0.1.0"
