"""Hydra, Lightning and logger glue: launching jobs, checkpoint files, loggers and the console."""
