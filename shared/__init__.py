"""Code every pktscope service imports: frame formats, records, config, Redis keys, sockets."""
