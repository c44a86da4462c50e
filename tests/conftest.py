"""Shared pytest set-up: quiet TensorFlow, the TensorFlow backend by default."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
