"""Evaluation stage: predictions -> metrics -> plots."""
