"""The capture service: reads packets (live or from a file) and shards them across decoders."""
