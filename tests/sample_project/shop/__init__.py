"""A sample shop: orders and their confirmation e-mails (tests/sample_project)."""
