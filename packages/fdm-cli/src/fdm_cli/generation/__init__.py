"""Generation from a trained model: load it and sample (`sampling`), or restore images by starting
its sampler at an intermediate stage: super-resolution and deblurring (`restore`)."""
