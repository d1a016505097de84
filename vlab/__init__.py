"""vlab: stateless Linux terminals booted over an NFS root, in one command."""

__version__ = "0.1.0"
