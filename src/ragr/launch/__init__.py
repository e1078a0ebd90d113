"""Launchers: how the composed config becomes running processes (``launcher=local`` runs in-process)."""
