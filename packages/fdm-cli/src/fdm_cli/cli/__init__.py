"""The `fdm` command line: Typer commands over the Python API, the only place fdm-cli imports
Typer. `app` names the commands; `console` turns a user error into one line and exit code 2."""
