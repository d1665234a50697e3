"""Pydantic schemas of what users write: trials (and studies)."""
