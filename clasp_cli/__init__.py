from clasp_cli.main import main

__all__ = ["main"]
