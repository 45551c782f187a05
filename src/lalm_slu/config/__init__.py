"""The config: its schema (package data), the layered loader, typed views of a job's settings, the vocabularies."""
