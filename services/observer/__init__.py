"""The observer service: the live view in Redis (for `pktscope inspect`) and the EVE JSON log."""
