"""The Python API of fdm-cli, one module per kind of work: training (`train`, and `step` for
fdm train's optimizer step on your own batches), loading and sampling a model (`generate`),
scoring it (`evaluate`) and data (`data`). `fdm_cli` re-exports every public name lazily
(docs/api.md lists them). `fdm sample`, `super-resolve`, `deblur`, `eval` and `data pack`
(`fdm_cli.cli`) check their flags and call these functions; `fdm train` and
`fdm train-autoencoder` call the training functions that `train` wraps.

Functions here take Python values (paths, numbers, mappings, tensors) and name the parameter at
fault, in backticks, in the errors they raise (`fdm_cli.errors.UserError`); a command shows its
own flag in that place.
"""
