"""Reporting: progress lines, results files."""
