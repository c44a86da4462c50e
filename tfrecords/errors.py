"""Errors for people: each names the file, record or flag at fault and what to do."""


class BadRecord(ValueError):
    """One record of a source dataset cannot be converted.

    Raised by a converter's ``load(item)`` (or by ``tfrecords.schema``) with a
    message naming the file, the index file and line when there is one, and
    what to do. ``tfrecords.writer.write_dataset(skip_bad=True)`` skips such
    records and counts them in the manifest; otherwise conversion stops.
    """


class ManifestError(ValueError):
    """A converted directory has no readable ``manifest.json`` or it is inconsistent."""


class CorruptShard(ValueError):
    """A TFRecord shard does not match its manifest entry (checksum or record count)."""
