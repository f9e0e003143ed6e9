"""Records and formats: what a data dir (or a generator) holds, read, validated and parsed."""
