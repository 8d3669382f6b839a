"""Training: the one loop both trainers share (`trainer`), the f-DM trainer (`loop`) and its
set-up (`setup`), the autoencoder trainer (`autoencoder`), training data streams (`data`), the
non-finite policy, progress and step timing."""
