"""Configuration: what both trainers' configs share (`base`), the f-DM training config
(`train`), the autoencoder's (`autoencoder`), presets, the fixed choices shared with the flags
(`choices`) and config files read safely (`files`)."""
