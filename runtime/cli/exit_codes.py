"""The exit codes live in runtime/exit_codes.py (the daemon returns them
too, below the CLI); this name stays for the commands that import it."""
from runtime.exit_codes import HELP, ExitCode

__all__ = ["HELP", "ExitCode"]
