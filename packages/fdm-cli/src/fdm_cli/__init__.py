"""fdm-cli: the `fdm` command for f-DM (train, sample, super-resolve, deblur, plugins, env).

The Typer app lives in `fdm_cli.app`; the training loop in `fdm_cli.train`; data loading in
`fdm_cli.data`; pictures in `fdm_cli.images`; DDP helpers in `fdm_cli.distributed`.
"""

__version__ = "0.1.0"
