"""Persistence: peewee models and every query; the database is the queue."""
