"""Examples of resilient_db in applications (importable so the tests can run them)."""
