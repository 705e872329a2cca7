"""Data stage: discover a dataset, read and preprocess images, build the DataLoaders."""
