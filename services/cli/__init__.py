"""pktscope command-line tools: the `pktscope` entry point and its subcommands."""
