"""The `clasp` command line (entry point: clasp_cli.main:main)."""
