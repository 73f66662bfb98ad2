"""Glue between Hydra, Lightning and the loggers: nothing here knows about detection."""
