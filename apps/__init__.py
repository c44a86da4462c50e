"""absl command-line apps: convert, train, evaluate, export, extract."""
