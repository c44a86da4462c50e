"""TFRecord schema, writer/reader, and one converter per dataset source."""
