"""LightningDataModules: the embedded default data sets and loaders for users' files (fields, EEG, images)."""
